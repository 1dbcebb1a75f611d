"""Which LLM API an exchange speaks (provider, api) from its host, path and request, and what the request
asked for (response format, Anthropic prefill)."""

from __future__ import annotations

import re
from urllib.parse import unquote

from failcore.llm.typed import as_dict, as_list, as_text
from failcore.policy.address import normalise_host
from failcore.policy.decide import path_aliases, request_path

_KNOWN_OPENAI_COMPATIBLE_HOSTS = {
    "openrouter.ai": "openrouter",
    "api.together.xyz": "together",
    "api.groq.com": "groq",
    "api.mistral.ai": "mistral",
    "api.deepseek.com": "deepseek",
    "api.x.ai": "xai",
    "api.fireworks.ai": "fireworks",
}
_OLLAMA_PORT = "11434"
# Paths are matched as case-insensitive routers read them (Express's default, ASP.NET Core's, Fiber's:
# `/V1/Chat/Completions` reaches the same handler), and Gemini's `:method` also as `%3A`, which
# request_path keeps encoded (a reserved character) but Google's front end decodes.
_COLON = r"(?::|%3A)"
_GEMINI_PATH = re.compile(
    r"^/v1(?:beta|alpha)?\d*/(?:tunedModels|models)/(?P<model>[^/:]+?)" + _COLON + r"(?P<method>[A-Za-z]+)$",
    re.IGNORECASE,
)
# Gemini on Vertex AI: {region-}aiplatform.googleapis.com/v1[beta1]/projects/P/locations/L/publishers/google/
# models/M:generateContent (or :streamGenerateContent).
_VERTEX_GEMINI_PATH = re.compile(
    r"^/v1(?:beta\d*)?/projects/[^/]+/locations/[^/]+/publishers/google/models/(?P<model>[^/:]+?)"
    + _COLON
    + r"(?P<method>[A-Za-z]+)$",
    re.IGNORECASE,
)
_GEMINI_METHODS = ("generatecontent", "streamgeneratecontent")
_GEMINI_STREAM = re.compile(_COLON + r"streamGenerateContent$", re.IGNORECASE)
# GET of a stored (or background) Responses API response: `/v1/responses/{id}`, `?stream=true` for its
# events. Its body carries the usage of a generation its POST may not have reported (`background: true`).
# Only under `/v1/` or Azure's `/openai/`: a survey's `/api/responses/42` is no LLM call.
_RESPONSE_RETRIEVAL = re.compile(r"/(?:v1|openai)/responses/(?P<id>[A-Za-z0-9_-]+)$", re.IGNORECASE)
# AWS Bedrock runtime (bedrock-runtime[-fips].{region}.amazonaws.com, or a gateway that speaks it):
# `POST /model/{modelId}/invoke[-with-response-stream]` (the model family's own body) and
# `/model/{modelId}/converse[-stream]` (the Converse API). The path alone is specific enough.
_BEDROCK_PATH = re.compile(
    r"^/model/(?P<model>[^/]+)/(?P<op>invoke|invoke-with-response-stream|converse|converse-stream)$",
    re.IGNORECASE,
)
_AZURE_DEPLOYMENT_PATH = re.compile(
    r"^/openai/deployments/(?P<deployment>[^/]+)/(?P<op>chat/completions|completions|responses)$",
    re.IGNORECASE,
)


def _split_host(host: str) -> tuple[str, str | None]:
    """(name, port) of `host[:port]`, the name as policy rules match it (`API.OpenAI.com.` is
    `api.openai.com`): provider detection must not be evaded by a spelling the resolver accepts."""
    host = host.strip()
    port: str | None = None
    if host.startswith("["):
        bracket_end = host.find("]")
        name, rest = host[1:bracket_end], host[bracket_end + 1 :]
        port = rest[1:] if rest.startswith(":") else None
    elif host.count(":") == 1:
        name, port = host.split(":")
    else:
        name = host
    return (normalise_host(name) if name else name), port


def _clean_path(path: str) -> str:
    """The path as the origin resolves it (no query, dot segments and `%XX` of unreserved characters
    undone: `/v1/chat/completion%73` is `/v1/chat/completions`, as policy rules see it), without a
    trailing slash."""
    path = request_path(path)
    return "/" + path.strip("/") if path.strip("/") else "/"


def response_retrieval_id(path: str) -> str | None:
    """The response id of a Responses API retrieval (`GET /v1/responses/{id}`), else None."""
    found = _RESPONSE_RETRIEVAL.search(_clean_path(path))
    if found is None or found.group("id").lower() == "compact":
        return None
    return found.group("id")


def _openai_style_api(path: str) -> str | None:
    path = path.lower()
    if path.endswith("/chat/completions"):
        return "chat_completions"
    if path.endswith(("/responses", "/responses/compact")) or response_retrieval_id(path):
        return "responses"
    if path.endswith("/completions"):
        return "completions"
    return None


def _shape_matches(api: str, request_json: dict | None) -> bool:
    """On hosts we do not recognise, the request body must look like the API we think it is."""
    if request_json is None:
        return True
    if api in ("chat_completions", "messages", "ollama_chat"):
        return isinstance(request_json.get("messages"), list)
    if api in ("completions", "ollama_generate"):
        return "prompt" in request_json
    if api == "responses":
        return "input" in request_json or "prompt" in request_json
    return True


def detect_api(
    host: str, path: str, request_json: dict | None, *, unreadable: bool = False
) -> tuple[str, str] | None:
    """Identify ``(provider, api)`` from host, path and request shape; None when it is not an LLM call.

    A path is read as the servers that route by it read it, as policy rules read it (path_aliases):
    uvicorn/Starlette and werkzeug decode `%2F` before routing (`/v1/chat%2Fcompletions` reaches the
    chat handler of a FastAPI server: vLLM's, LiteLLM's), Tomcat, Jetty and Spring drop each segment's
    `;…` parameters (`/v1/chat/completions;x=1`). The first reading that is an LLM call is the one.

    `unreadable`: the request has a body that could not be read as a JSON object (not JSON even to
    Python's parser, or past the size failcore reads). On a path whose detection needs the body's shape
    (`/v1/messages`, `/api/chat`, `/api/generate`) it then counts as the LLM call it may be: a body
    failcore cannot read must not make the call free. A request without a body still needs its host."""
    found = _detect_api(host, path, request_json, unreadable)
    if found is not None:
        return found
    for alias in other_readings(path):
        found = _detect_api(host, alias, request_json, unreadable)
        if found is not None:
            return found
    return None


def other_readings(path: str) -> list[str]:
    """The readings of a request path other than as written that servers route by (path_aliases: `%2F`
    read as `/`, `;…` parameters dropped), as request_path spells them; none for most paths."""
    clean = request_path(path)
    if "%2F" in clean or "%5C" in clean or "\\" in clean or ";" in clean or "%3B" in clean or "%3b" in clean:
        return [alias for alias, _climbs in path_aliases(clean)]
    return []


def _detect_api(host: str, path: str, request_json: dict | None, unreadable: bool) -> tuple[str, str] | None:
    hostname, port = _split_host(host)
    path = _clean_path(path)
    lower = path.lower()

    bedrock = _BEDROCK_PATH.match(path)
    if bedrock:
        op = bedrock.group("op").lower()
        return "bedrock", "bedrock_converse" if op.startswith("converse") else "bedrock_invoke"
    if lower.endswith("/v1/messages/batches"):
        # Creating a batch (a body of `requests`), not listing them (a GET without a body).
        if not unreadable and not isinstance(as_dict(request_json).get("requests"), list):
            return None
        return ("anthropic" if hostname == "api.anthropic.com" else "anthropic_compatible"), "message_batches"

    vertex = _VERTEX_GEMINI_PATH.match(path)
    if vertex and vertex.group("method").lower() in _GEMINI_METHODS:
        if hostname == "aiplatform.googleapis.com" or hostname.endswith("-aiplatform.googleapis.com"):
            return "vertex_ai", "gemini_generate"
        if request_json is not None and "contents" in request_json:
            return "vertex_ai", "gemini_generate"
        return None
    gemini = _GEMINI_PATH.match(path)
    if gemini and gemini.group("method").lower() in _GEMINI_METHODS:
        official = hostname == "generativelanguage.googleapis.com"
        if official or request_json is None or "contents" in request_json:
            return "gemini", "gemini_generate"
        return None
    if hostname == "generativelanguage.googleapis.com":
        api = _openai_style_api(path)
        return ("gemini", api) if api and lower.startswith("/v1beta/openai/") else None

    if hostname.endswith((".openai.azure.com", ".cognitiveservices.azure.com")):
        deployment = _AZURE_DEPLOYMENT_PATH.match(path)
        if deployment:
            return "azure_openai", _openai_style_api("/" + deployment.group("op")) or "chat_completions"
        api = _openai_style_api(path)
        return ("azure_openai", api) if api and lower.startswith("/openai/") else None

    if lower.endswith("/v1/messages"):
        if hostname == "api.anthropic.com":
            return "anthropic", "messages"
        if unreadable or (request_json is not None and _shape_matches("messages", request_json)):
            return "anthropic_compatible", "messages"
        return None

    if lower in ("/api/chat", "/api/generate"):
        api = "ollama_chat" if lower == "/api/chat" else "ollama_generate"
        if (
            port == _OLLAMA_PORT
            or unreadable
            or (request_json is not None and "model" in request_json and _shape_matches(api, request_json))
        ):
            return "ollama", api
        return None

    api = _openai_style_api(path)
    if api is None:
        return None
    if hostname == "api.openai.com":
        return ("openai", api) if lower.startswith("/v1/") else None
    if not _shape_matches(api, request_json):
        return None
    if port == _OLLAMA_PORT:
        return "ollama", api
    return _KNOWN_OPENAI_COMPATIBLE_HOSTS.get(hostname, "openai_compatible"), api


def requested_response_format(api: str, request_json: dict | None) -> str | None:
    """What structured output the request demanded: json_object, json_schema, tool_forced, json_prefill."""
    if not request_json:
        return None
    if api == "chat_completions":
        kind = as_text(as_dict(request_json.get("response_format")).get("type"))
        if kind in ("json_object", "json_schema"):
            return kind
        return "tool_forced" if _openai_tool_forced(request_json.get("tool_choice")) else None
    if api == "responses":
        kind = as_text(as_dict(as_dict(request_json.get("text")).get("format")).get("type"))
        if kind in ("json_object", "json_schema"):
            return kind
        return "tool_forced" if _openai_tool_forced(request_json.get("tool_choice")) else None
    if api == "messages":
        return _anthropic_response_format(request_json)
    if api == "gemini_generate":
        config = as_dict(request_json.get("generationConfig") or request_json.get("generation_config"))
        mime = config.get("responseMimeType") or config.get("response_mime_type")
        if mime != "application/json":
            return None
        has_schema = any(k in config for k in ("responseSchema", "responseJsonSchema", "response_schema"))
        return "json_schema" if has_schema else "json_object"
    if api in ("ollama_chat", "ollama_generate"):
        fmt = request_json.get("format")
        if fmt == "json":
            return "json_object"
        return "json_schema" if isinstance(fmt, dict) else None
    return None


def _openai_tool_forced(tool_choice: object) -> bool:
    if tool_choice == "required":
        return True
    kind = as_dict(tool_choice).get("type")
    return kind in ("function", "custom")


def _anthropic_response_format(request_json: dict) -> str | None:
    structured = as_dict(as_dict(request_json.get("output_config")).get("format")) or as_dict(
        request_json.get("output_format")  # the pre-GA beta spelling
    )
    if structured.get("type") == "json_schema":
        return "json_schema"
    if as_dict(request_json.get("tool_choice")).get("type") in ("tool", "any"):
        return "tool_forced"
    prefill = anthropic_prefill(request_json)
    return "json_prefill" if prefill is not None and prefill.lstrip().startswith(("{", "[")) else None


def anthropic_prefill(request_json: dict) -> str | None:
    """Text of a trailing assistant turn: Anthropic continues it, so the response omits this prefix."""
    messages = as_list(request_json.get("messages"))
    if not messages or as_dict(messages[-1]).get("role") != "assistant":
        return None
    content = as_dict(messages[-1]).get("content")
    if isinstance(content, str):
        return content
    blocks = [as_dict(block) for block in as_list(content)]
    texts = [as_text(block.get("text")) or "" for block in blocks if block.get("type") == "text"]
    return "".join(texts) if texts else None


def request_model(provider: str, api: str, path: str, request_json: dict | None) -> str | None:
    model = as_text((request_json or {}).get("model"))
    if model:
        return model[:256]
    clean = _clean_path(path)
    if provider == "bedrock":
        bedrock = _BEDROCK_PATH.match(clean)
        return unquote(bedrock.group("model"))[:256] if bedrock else None
    if api == "message_batches":
        return batch_model(request_json)
    if provider == "azure_openai":
        deployment = _AZURE_DEPLOYMENT_PATH.match(clean)
        return deployment.group("deployment") if deployment else None
    if api == "gemini_generate":
        gemini = _GEMINI_PATH.match(clean) or _VERTEX_GEMINI_PATH.match(clean)
        return gemini.group("model") if gemini else None
    return None


def batch_requests(request_json: dict | None) -> list[dict]:
    """The `params` of each request of a Message Batch (`{"requests": [{"custom_id", "params"}]}`)."""
    return [as_dict(as_dict(item).get("params")) for item in as_list(as_dict(request_json).get("requests"))]


def batch_model(request_json: dict | None) -> str | None:
    """The model every request of a batch names, None when they differ or one names none."""
    models = {as_text(params.get("model")) for params in batch_requests(request_json)}
    if len(models) != 1:
        return None
    (model,) = models
    return model[:256] if model else None


def request_streams(api: str, path: str, request_json: dict | None) -> bool:
    if api == "gemini_generate":
        return _GEMINI_STREAM.search(_clean_path(path)) is not None
    if api.startswith("bedrock_"):
        return _clean_path(path).lower().endswith("stream")
    stream = (request_json or {}).get("stream")
    if uses_ndjson(api):
        return stream is not False  # Ollama's native API streams unless told not to
    return stream is True


def uses_ndjson(api: str) -> bool:
    return api in ("ollama_chat", "ollama_generate")
