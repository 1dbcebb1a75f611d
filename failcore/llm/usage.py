"""Provider detection and token-usage extraction for LLM API exchanges.

Normalised token semantics (identical for every provider, so budgets and prices mean one thing):

* ``input_tokens``        total prompt tokens INCLUDING cache reads and cache writes.
                          OpenAI/Gemini already report it that way; Anthropic reports the uncached part only,
                          so its cache_read + cache_creation tokens are added back.
* ``cached_input_tokens`` the part of ``input_tokens`` read from the prompt cache.
* ``cache_write_tokens``  the part of ``input_tokens`` written to the prompt cache.
* ``output_tokens``       all generated tokens INCLUDING reasoning/thinking tokens (Gemini reports thoughts
                          separately; they are added back because they are billed as output).
* ``reasoning_tokens``    the part of ``output_tokens`` spent on reasoning.

A provider that did not report usage yields ``usage_known=False`` and ``None`` counts — never zeros.
``usage_known`` is True only once the provider's final usage report was seen; a cut stream may still carry
the partial counts reported so far (e.g. Anthropic's message_start) with ``usage_known=False``.
Bodies handed to this module are attacker-influenced: every field is type-checked and nothing is trusted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace

import orjson

from failcore.framing import MAX_EVENT_BYTES, Frame, NdjsonDecoder, SseDecoder

OUTPUT_TEXT_CAP = 256 * 1024
TRACKER_MAX_EVENT_BYTES = 1024 * 1024

# Client-executed Responses output items: these are the actions the agent itself will perform.
# Server-side built-ins (web_search_call, file_search_call, mcp_call, ...) run at OpenAI and are not counted.
RESPONSES_TOOL_CALL_TYPES = frozenset(
    {
        "function_call",
        "custom_tool_call",
        "computer_call",
        "local_shell_call",
        "shell_call",
        "apply_patch_call",
    }
)

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
_GEMINI_PATH = re.compile(
    r"^/v1(?:beta|alpha)?\d*/(?:tunedModels|models)/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$"
)
# Gemini on Vertex AI: {region-}aiplatform.googleapis.com/v1[beta1]/projects/P/locations/L/publishers/google/
# models/M:generateContent (or :streamGenerateContent).
_VERTEX_GEMINI_PATH = re.compile(
    r"^/v1(?:beta\d*)?/projects/[^/]+/locations/[^/]+/publishers/google/models/(?P<model>[^/:]+)"
    r":(?P<method>[A-Za-z]+)$"
)
_AZURE_DEPLOYMENT_PATH = re.compile(
    r"^/openai/deployments/(?P<deployment>[^/]+)/(?P<op>chat/completions|completions|responses)$"
)


@dataclass(slots=True)
class UsageSnapshot:
    """Usage numbers observed so far; ``output_chars`` lets a caller estimate tokens before usage arrives."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    usage_known: bool = False
    output_chars: int = 0
    # The part of cache_write_tokens written with a 1-hour TTL (Anthropic bills it at 2x input).
    cache_write_1h_tokens: int | None = None


@dataclass(slots=True)
class LlmCall:
    provider: str
    api: str
    request_model: str | None = None
    response_model: str | None = None
    stream: bool = False
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    usage_known: bool = False
    cache_write_1h_tokens: int | None = None
    finish_reason: str | None = None
    tool_calls: int = 0
    response_format: str | None = None
    # The tier that served the call, as the response reports it (OpenAI: default/priority/flex).
    service_tier: str | None = None
    output_text: str | None = None
    output_truncated: bool = False
    # Raw JSON text of each tool call's arguments/input, kept so a forced-tool contract can be checked.
    tool_inputs: list[str] = field(default_factory=list)
    status: int | None = None

    @property
    def model(self) -> str | None:
        return self.response_model or self.request_model

    def to_dict(self) -> dict:
        return asdict(self)

    def apply_usage(self, usage: UsageSnapshot) -> None:
        """Take the token counts (and whether they are known) from a usage snapshot."""
        self.input_tokens = usage.input_tokens
        self.output_tokens = usage.output_tokens
        self.total_tokens = usage.total_tokens
        self.cached_input_tokens = usage.cached_input_tokens
        self.cache_write_tokens = usage.cache_write_tokens
        self.reasoning_tokens = usage.reasoning_tokens
        self.cache_write_1h_tokens = usage.cache_write_1h_tokens
        self.usage_known = usage.usage_known


# ---------------------------------------------------------------- small typed accessors


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def _sum_known(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _loads(data: bytes | str) -> object | None:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


# ---------------------------------------------------------------- detection


def _split_host(host: str) -> tuple[str, str | None]:
    host = host.strip().lower()
    if host.startswith("["):
        bracket_end = host.find("]")
        name, rest = host[1:bracket_end], host[bracket_end + 1 :]
        return name, rest[1:] if rest.startswith(":") else None
    if host.count(":") == 1:
        name, port = host.split(":")
        return name, port
    return host, None


def _clean_path(path: str) -> str:
    path = path.split("?", 1)[0].split("#", 1)[0]
    return "/" + path.strip("/") if path.strip("/") else "/"


def _openai_style_api(path: str) -> str | None:
    if path.endswith("/chat/completions"):
        return "chat_completions"
    if path.endswith(("/responses", "/responses/compact")):
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


def detect_api(host: str, path: str, request_json: dict | None) -> tuple[str, str] | None:
    """Identify ``(provider, api)`` from host, path and request shape; None when it is not an LLM call."""
    hostname, port = _split_host(host)
    path = _clean_path(path)

    vertex = _VERTEX_GEMINI_PATH.match(path)
    if vertex and vertex.group("method") in ("generateContent", "streamGenerateContent"):
        if hostname == "aiplatform.googleapis.com" or hostname.endswith("-aiplatform.googleapis.com"):
            return "vertex_ai", "gemini_generate"
        if request_json is not None and "contents" in request_json:
            return "vertex_ai", "gemini_generate"
        return None
    gemini = _GEMINI_PATH.match(path)
    if gemini and gemini.group("method") in ("generateContent", "streamGenerateContent"):
        official = hostname == "generativelanguage.googleapis.com"
        if official or request_json is None or "contents" in request_json:
            return "gemini", "gemini_generate"
        return None
    if hostname == "generativelanguage.googleapis.com":
        api = _openai_style_api(path)
        return ("gemini", api) if api and path.startswith("/v1beta/openai/") else None

    if hostname.endswith((".openai.azure.com", ".cognitiveservices.azure.com")):
        deployment = _AZURE_DEPLOYMENT_PATH.match(path)
        if deployment:
            return "azure_openai", _openai_style_api("/" + deployment.group("op")) or "chat_completions"
        api = _openai_style_api(path)
        return ("azure_openai", api) if api and path.startswith("/openai/") else None

    if path.endswith("/v1/messages"):
        if hostname == "api.anthropic.com":
            return "anthropic", "messages"
        if _shape_matches("messages", request_json) and request_json is not None:
            return "anthropic_compatible", "messages"
        return None

    if path in ("/api/chat", "/api/generate"):
        api = "ollama_chat" if path == "/api/chat" else "ollama_generate"
        if port == _OLLAMA_PORT or (
            request_json is not None and "model" in request_json and _shape_matches(api, request_json)
        ):
            return "ollama", api
        return None

    api = _openai_style_api(path)
    if api is None:
        return None
    if hostname == "api.openai.com":
        return ("openai", api) if path.startswith("/v1/") else None
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
        kind = _text(_dict(request_json.get("response_format")).get("type"))
        if kind in ("json_object", "json_schema"):
            return kind
        return "tool_forced" if _openai_tool_forced(request_json.get("tool_choice")) else None
    if api == "responses":
        kind = _text(_dict(_dict(request_json.get("text")).get("format")).get("type"))
        if kind in ("json_object", "json_schema"):
            return kind
        return "tool_forced" if _openai_tool_forced(request_json.get("tool_choice")) else None
    if api == "messages":
        return _anthropic_response_format(request_json)
    if api == "gemini_generate":
        config = _dict(request_json.get("generationConfig") or request_json.get("generation_config"))
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
    kind = _dict(tool_choice).get("type")
    return kind in ("function", "custom")


def _anthropic_response_format(request_json: dict) -> str | None:
    structured = _dict(_dict(request_json.get("output_config")).get("format")) or _dict(
        request_json.get("output_format")  # the pre-GA beta spelling
    )
    if structured.get("type") == "json_schema":
        return "json_schema"
    if _dict(request_json.get("tool_choice")).get("type") in ("tool", "any"):
        return "tool_forced"
    prefill = anthropic_prefill(request_json)
    return "json_prefill" if prefill is not None and prefill.lstrip().startswith(("{", "[")) else None


def anthropic_prefill(request_json: dict) -> str | None:
    """Text of a trailing assistant turn: Anthropic continues it, so the response omits this prefix."""
    messages = _list(request_json.get("messages"))
    if not messages or _dict(messages[-1]).get("role") != "assistant":
        return None
    content = _dict(messages[-1]).get("content")
    if isinstance(content, str):
        return content
    blocks = [_dict(block) for block in _list(content)]
    texts = [_text(block.get("text")) or "" for block in blocks if block.get("type") == "text"]
    return "".join(texts) if texts else None


# ---------------------------------------------------------------- bounded buffers


class _CappedText:
    """Appends text up to a byte-ish cap (characters, cheap) and remembers whether anything was dropped."""

    __slots__ = ("_cap", "_parts", "_size", "chars", "seen", "truncated")

    def __init__(self, cap: int, keep: bool) -> None:
        self._parts: list[str] = []
        self._size = 0
        self._cap = cap if keep else 0
        self.truncated = False
        self.seen = False
        self.chars = 0

    def append(self, text: str) -> None:
        self.seen = True
        self.chars += len(text)
        room = self._cap - self._size
        if room <= 0:
            self.truncated = self.truncated or self._cap > 0
            return
        piece = text[:room]
        if len(piece) < len(text):
            self.truncated = True
        self._parts.append(piece)
        self._size += len(piece)

    def replace(self, text: str) -> None:
        self._parts, self._size, self.truncated, self.chars = [], 0, False, 0
        self.append(text)

    def value(self) -> str | None:
        return "".join(self._parts) if self.seen and self._cap > 0 else None


def _salvage_object(tail: bytes, key: bytes) -> dict | None:
    """Recover ``"key": {...}`` from the tail of an oversized event whose head was cut away."""
    position = tail.rfind(b'"' + key + b'"')
    if position < 0:
        return None
    brace = tail.find(b"{", position)
    if brace < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(tail[brace:].decode("utf-8", "replace"))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------- per-API accumulators


class _Accumulator:
    """Folds one API's response (whole document or stream events) into usage, text and tool-call counts."""

    usage_key = b"usage"

    def __init__(self, keep_content: bool) -> None:
        self.keep_content = keep_content
        self.text = _CappedText(OUTPUT_TEXT_CAP, keep_content)
        self.tool_input_budget = OUTPUT_TEXT_CAP
        self.tool_inputs: list[str] = []
        self.response_model: str | None = None
        self.service_tier: str | None = None
        self.finish_reason: str | None = None
        self.tool_calls = 0
        self.done = False
        # The stream ended on an error (an `error` event, `response.failed`), not on its normal end.
        self.errored = False
        self.usage = UsageSnapshot()

    def handle_document(self, doc: object) -> None:
        raise NotImplementedError

    def handle_event(self, event: str | None, payload: object) -> None:
        raise NotImplementedError

    def apply_usage(self, usage: dict) -> None:
        raise NotImplementedError

    def handle_done_marker(self) -> None:
        self.done = True

    def add_tool_input(self, raw: str) -> None:
        if not self.keep_content:
            return
        if len(raw) > self.tool_input_budget:
            self.text.truncated = True
            return
        self.tool_input_budget -= len(raw)
        self.tool_inputs.append(raw)

    def set_model(self, value: object) -> None:
        model = _text(value)
        if model:
            self.response_model = model[:256]

    def set_service_tier(self, value: object) -> None:
        tier = _text(value)
        if tier:
            self.service_tier = tier[:32]

    def set_finish(self, value: object) -> None:
        reason = _text(value)
        if reason:
            self.finish_reason = reason[:64]

    def snapshot(self) -> UsageSnapshot:
        return replace(self.usage, output_chars=self.text.chars)


class _ChatCompletions(_Accumulator):
    """OpenAI Chat Completions and legacy Completions (``choices[].text``)."""

    def __init__(self, keep_content: bool) -> None:
        super().__init__(keep_content)
        self._stream_tools: set[tuple[int, int]] = set()
        self._stream_args: dict[tuple[int, int], list[str]] = {}
        self._legacy_function_choices: set[int] = set()

    def handle_document(self, doc: object) -> None:
        doc = _dict(doc)
        self.set_model(doc.get("model"))
        self.set_service_tier(doc.get("service_tier"))
        for position, choice in enumerate(_list(doc.get("choices"))):
            choice = _dict(choice)
            message = _dict(choice.get("message"))
            content = _text(message.get("content")) if message else _text(choice.get("text"))
            if position == 0:
                if content is not None:
                    self.text.append(content)
                self.set_finish(choice.get("finish_reason"))
            for call in _list(message.get("tool_calls")):
                self.tool_calls += 1
                call = _dict(call)
                raw = _text(_dict(call.get("function")).get("arguments"))
                raw = raw if raw is not None else _text(_dict(call.get("custom")).get("input"))
                if raw is not None:
                    self.add_tool_input(raw)
            legacy = _dict(message.get("function_call"))
            if legacy:
                self.tool_calls += 1
                raw = _text(legacy.get("arguments"))
                if raw is not None:
                    self.add_tool_input(raw)
        self.apply_usage(_dict(doc.get("usage")))
        self.done = True

    def handle_event(self, event: str | None, payload: object) -> None:
        chunk = _dict(payload)
        if "error" in chunk and "choices" not in chunk:
            self.done = self.errored = True
            return
        self.set_model(chunk.get("model"))
        self.set_service_tier(chunk.get("service_tier"))
        for choice in _list(chunk.get("choices")):
            choice = _dict(choice)
            index = _count(choice.get("index")) or 0
            delta = _dict(choice.get("delta"))
            content = _text(delta.get("content")) if delta else _text(choice.get("text"))
            if index == 0 and content:
                self.text.append(content)
            for call in _list(delta.get("tool_calls")):
                call = _dict(call)
                key = (index, _count(call.get("index")) or 0)
                if key not in self._stream_tools:
                    self._stream_tools.add(key)
                    self.tool_calls += 1
                arguments = _text(_dict(call.get("function")).get("arguments"))
                if arguments and self.keep_content:
                    self._stream_args.setdefault(key, []).append(arguments)
            if _dict(delta.get("function_call")) and index not in self._legacy_function_choices:
                self._legacy_function_choices.add(index)
                self.tool_calls += 1
            if index == 0:
                self.set_finish(choice.get("finish_reason"))
        usage = chunk.get("usage")
        if not isinstance(usage, dict):
            # Groq streams carry the usage in their own extension object, on the last chunk.
            usage = _dict(chunk.get("x_groq")).get("usage")
        if isinstance(usage, dict):
            self.apply_usage(usage)

    def finalize_stream(self) -> None:
        for key in sorted(self._stream_args):
            self.add_tool_input("".join(self._stream_args[key]))
        self._stream_args.clear()

    def apply_usage(self, usage: dict) -> None:
        prompt = _count(usage.get("prompt_tokens"))
        completion = _count(usage.get("completion_tokens"))
        if prompt is None and completion is None:
            return
        prompt_details = _dict(usage.get("prompt_tokens_details"))
        completion_details = _dict(usage.get("completion_tokens_details"))
        self.usage.input_tokens = prompt
        self.usage.output_tokens = completion
        self.usage.total_tokens = _count(usage.get("total_tokens")) or _sum_known(prompt, completion)
        # DeepSeek bills by its own cache hit/miss split (prompt_tokens = hit + miss).
        hit = _count(usage.get("prompt_cache_hit_tokens"))
        cached = _count(prompt_details.get("cached_tokens"))
        self.usage.cached_input_tokens = hit if hit is not None else cached
        self.usage.cache_write_tokens = _count(prompt_details.get("cache_write_tokens"))
        self.usage.reasoning_tokens = _count(completion_details.get("reasoning_tokens"))
        self.usage.usage_known = True


class _Responses(_Accumulator):
    _TERMINAL = ("response.completed", "response.incomplete", "response.failed")

    def __init__(self, keep_content: bool) -> None:
        super().__init__(keep_content)
        self._tool_items: set[int | str] = set()

    def handle_document(self, doc: object) -> None:
        self._absorb_response(_dict(doc), final=True)
        self.done = True

    def _absorb_response(self, response: dict, *, final: bool) -> None:
        self.set_model(response.get("model"))
        self.set_service_tier(response.get("service_tier"))
        status = _text(response.get("status"))
        if final:
            reason = _text(_dict(response.get("incomplete_details")).get("reason"))
            self.set_finish(reason or status)
            if not self.text.seen:
                for text in self._output_texts(response):
                    self.text.append(text)
            self._count_items(_list(response.get("output")), collect_inputs=True)
        usage = response.get("usage")
        if isinstance(usage, dict):
            self.apply_usage(usage)

    @staticmethod
    def _output_texts(response: dict) -> Iterator[str]:
        for item in _list(response.get("output")):
            item = _dict(item)
            if item.get("type") != "message":
                continue
            for part in _list(item.get("content")):
                part = _dict(part)
                text = _text(part.get("text"))
                if part.get("type") == "output_text" and text is not None:
                    yield text

    def _count_items(self, items: list, *, collect_inputs: bool) -> None:
        for position, item in enumerate(items):
            item = _dict(item)
            if item.get("type") not in RESPONSES_TOOL_CALL_TYPES:
                continue
            key = _text(item.get("id")) or _text(item.get("call_id")) or position
            if key not in self._tool_items:
                self._tool_items.add(key)
                self.tool_calls += 1
                if collect_inputs:
                    raw = _text(item.get("arguments")) or _text(item.get("input"))
                    if raw is not None and item.get("type") == "function_call":
                        self.add_tool_input(raw)

    def handle_event(self, event: str | None, payload: object) -> None:
        data = _dict(payload)
        kind = _text(data.get("type")) or event
        if kind == "response.output_text.delta":
            delta = _text(data.get("delta"))
            if delta:
                self.text.append(delta)
        elif kind in ("response.output_item.added", "response.output_item.done"):
            item = _dict(data.get("item"))
            if item.get("type") in RESPONSES_TOOL_CALL_TYPES:
                key = _text(item.get("id")) or _text(item.get("call_id")) or f"#{data.get('output_index')}"
                if key not in self._tool_items:
                    self._tool_items.add(key)
                    self.tool_calls += 1
                if kind == "response.output_item.done" and item.get("type") == "function_call":
                    raw = _text(item.get("arguments"))
                    if raw is not None:
                        self.add_tool_input(raw)
        elif kind in ("response.created", "response.in_progress", "response.queued"):
            self._absorb_response(_dict(data.get("response")), final=False)
        elif kind in self._TERMINAL:
            response = _dict(data.get("response"))
            # Tool inputs were already taken from output_item.done; the final object only fills gaps.
            self.set_model(response.get("model"))
            reason = _text(_dict(response.get("incomplete_details")).get("reason"))
            self.set_finish(reason or _text(response.get("status")) or kind.rsplit(".", 1)[-1])
            if not self.text.seen:
                for text in self._output_texts(response):
                    self.text.append(text)
            self._count_items(_list(response.get("output")), collect_inputs=False)
            usage = response.get("usage")
            if isinstance(usage, dict):
                self.apply_usage(usage)
            self.done = True
            self.errored = kind == "response.failed"
        elif kind == "error":
            self.done = self.errored = True

    def apply_usage(self, usage: dict) -> None:
        input_tokens = _count(usage.get("input_tokens"))
        output_tokens = _count(usage.get("output_tokens"))
        if input_tokens is None and output_tokens is None:
            return
        input_details = _dict(usage.get("input_tokens_details"))
        output_details = _dict(usage.get("output_tokens_details"))
        self.usage.input_tokens = input_tokens
        self.usage.output_tokens = output_tokens
        self.usage.total_tokens = _count(usage.get("total_tokens")) or _sum_known(input_tokens, output_tokens)
        self.usage.cached_input_tokens = _count(input_details.get("cached_tokens"))
        self.usage.cache_write_tokens = _count(input_details.get("cache_write_tokens"))
        self.usage.reasoning_tokens = _count(output_details.get("reasoning_tokens"))
        self.usage.usage_known = True


_ANTHROPIC_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


class _AnthropicMessages(_Accumulator):
    def __init__(self, keep_content: bool) -> None:
        super().__init__(keep_content)
        self._raw: dict[str, int] = {}
        self._tool_blocks: dict[int, list[str]] = {}
        self._final_usage_seen = False

    def handle_document(self, doc: object) -> None:
        message = _dict(doc)
        self.set_model(message.get("model"))
        self.set_finish(message.get("stop_reason"))
        for block in _list(message.get("content")):
            block = _dict(block)
            if block.get("type") == "text":
                self.text.append(_text(block.get("text")) or "")
            elif block.get("type") == "tool_use":
                self.tool_calls += 1
                if "input" in block:
                    self.add_tool_input(orjson.dumps(block["input"]).decode())
        self._final_usage_seen = True
        self.apply_usage(_dict(message.get("usage")))
        self.done = True

    def handle_event(self, event: str | None, payload: object) -> None:
        data = _dict(payload)
        kind = _text(data.get("type")) or event
        if kind == "message_start":
            message = _dict(data.get("message"))
            self.set_model(message.get("model"))
            self.apply_usage(_dict(message.get("usage")))
        elif kind == "content_block_start":
            block = _dict(data.get("content_block"))
            if block.get("type") == "tool_use":
                self.tool_calls += 1
                self._tool_blocks[_count(data.get("index")) or 0] = []
            elif block.get("type") == "text":
                self.text.append(_text(block.get("text")) or "")
        elif kind == "content_block_delta":
            delta = _dict(data.get("delta"))
            if delta.get("type") == "text_delta":
                self.text.append(_text(delta.get("text")) or "")
            elif delta.get("type") == "input_json_delta" and self.keep_content:
                parts = self._tool_blocks.get(_count(data.get("index")) or 0)
                partial = _text(delta.get("partial_json"))
                if parts is not None and partial:
                    parts.append(partial)
        elif kind == "content_block_stop":
            parts = self._tool_blocks.pop(_count(data.get("index")) or 0, None)
            if parts is not None:
                self.add_tool_input("".join(parts) or "{}")
        elif kind == "message_delta":
            self.set_finish(_dict(data.get("delta")).get("stop_reason"))
            usage = data.get("usage")
            if isinstance(usage, dict):
                # message_start's usage is provisional (output_tokens ~1); message_delta's is the final tally.
                self._final_usage_seen = True
                self.apply_usage(usage)
        elif kind in ("message_stop", "error"):
            self.done = True
            self.errored = kind == "error"

    def finalize_stream(self) -> None:
        # Blocks never closed (truncated stream) are still evidence of what the model was sending.
        for index in sorted(self._tool_blocks):
            self.add_tool_input("".join(self._tool_blocks[index]))
        self._tool_blocks.clear()

    def apply_usage(self, usage: dict) -> None:
        # message_delta usage is cumulative: the latest value of each field replaces, never adds.
        for name in _ANTHROPIC_USAGE_FIELDS:
            value = _count(usage.get(name))
            if value is not None:
                self._raw[name] = value
        thinking = _count(_dict(usage.get("output_tokens_details")).get("thinking_tokens"))
        if thinking is not None:
            self._raw["thinking_tokens"] = thinking
        one_hour = _count(_dict(usage.get("cache_creation")).get("ephemeral_1h_input_tokens"))
        if one_hour is not None:
            self._raw["cache_write_1h_tokens"] = one_hour
        if "input_tokens" not in self._raw and "output_tokens" not in self._raw:
            return
        uncached = self._raw.get("input_tokens")
        read = self._raw.get("cache_read_input_tokens")
        write = self._raw.get("cache_creation_input_tokens")
        self.usage.input_tokens = None if uncached is None else uncached + (read or 0) + (write or 0)
        self.usage.output_tokens = self._raw.get("output_tokens")
        self.usage.total_tokens = _sum_known(self.usage.input_tokens, self.usage.output_tokens)
        self.usage.cached_input_tokens = read
        self.usage.cache_write_tokens = write
        one_hour = self._raw.get("cache_write_1h_tokens")
        self.usage.cache_write_1h_tokens = min(one_hour, write or 0) if one_hour is not None else None
        self.usage.reasoning_tokens = self._raw.get("thinking_tokens")
        both_known = self.usage.input_tokens is not None and self.usage.output_tokens is not None
        self.usage.usage_known = both_known and self._final_usage_seen


class _GeminiGenerate(_Accumulator):
    usage_key = b"usageMetadata"

    def __init__(self, keep_content: bool) -> None:
        super().__init__(keep_content)
        self._counts_known = False

    def handle_document(self, doc: object) -> None:
        if isinstance(doc, list):
            for chunk in doc:
                self.handle_event(None, chunk)
        else:
            self.handle_event(None, doc)
        self.done = True
        self.usage.usage_known = self._counts_known

    def handle_event(self, event: str | None, payload: object) -> None:
        chunk = _dict(payload)
        self.set_model(chunk.get("modelVersion"))
        candidates = _list(chunk.get("candidates"))
        for position, candidate in enumerate(candidates):
            candidate = _dict(candidate)
            for part in _list(_dict(candidate.get("content")).get("parts")):
                part = _dict(part)
                if "functionCall" in part:
                    self.tool_calls += 1
                    self.add_tool_input(orjson.dumps(_dict(part["functionCall"]).get("args", {})).decode())
                elif position == 0 and not part.get("thought"):
                    text = _text(part.get("text"))
                    if text is not None:
                        self.text.append(text)
            if position == 0:
                self.set_finish(candidate.get("finishReason"))
        usage = chunk.get("usageMetadata")
        if isinstance(usage, dict):
            self.apply_usage(usage)
        if self.finish_reason and isinstance(usage, dict):
            self.done = True
        # Every chunk carries running totals; only the one with the finish reason is final.
        self.usage.usage_known = self._counts_known and self.done

    def apply_usage(self, usage: dict) -> None:
        prompt = _count(usage.get("promptTokenCount"))
        candidates = _count(usage.get("candidatesTokenCount"))
        thoughts = _count(usage.get("thoughtsTokenCount"))
        tool_prompt = _count(usage.get("toolUsePromptTokenCount"))
        if prompt is None and candidates is None:
            return
        total = _count(usage.get("totalTokenCount"))
        input_tokens = _sum_known(prompt, tool_prompt)
        # thoughtsTokenCount is reported beside candidatesTokenCount but billed as output.
        output_tokens = _sum_known(candidates, thoughts)
        if output_tokens is None and total is not None and input_tokens is not None and total >= input_tokens:
            output_tokens = total - input_tokens  # e.g. a blocked prompt: nothing generated
        self.usage.input_tokens = input_tokens
        self.usage.output_tokens = output_tokens
        self.usage.total_tokens = total if total is not None else _sum_known(input_tokens, output_tokens)
        self.usage.cached_input_tokens = _count(usage.get("cachedContentTokenCount"))
        self.usage.reasoning_tokens = thoughts
        self._counts_known = input_tokens is not None and output_tokens is not None


class _OllamaNative(_Accumulator):
    usage_key = b"eval_count"

    def handle_document(self, doc: object) -> None:
        self.handle_event(None, doc)
        self.done = True

    def handle_event(self, event: str | None, payload: object) -> None:
        chunk = _dict(payload)
        self.set_model(chunk.get("model"))
        message = _dict(chunk.get("message"))
        text = _text(message.get("content")) if message else _text(chunk.get("response"))
        if text:
            self.text.append(text)
        for call in _list(message.get("tool_calls")):
            self.tool_calls += 1
            arguments = _dict(call).get("function", {})
            self.add_tool_input(orjson.dumps(_dict(arguments).get("arguments", {})).decode())
        if chunk.get("done") is True:
            self.set_finish(chunk.get("done_reason") or "stop")
            self.apply_usage(chunk)
            self.done = True
        elif "error" in chunk:
            self.done = self.errored = True

    def apply_usage(self, usage: dict) -> None:
        prompt = _count(usage.get("prompt_eval_count"))
        completion = _count(usage.get("eval_count"))
        if completion is None:
            return
        self.usage.input_tokens = prompt
        self.usage.output_tokens = completion
        self.usage.total_tokens = _sum_known(prompt, completion)
        self.usage.usage_known = prompt is not None


_ACCUMULATORS: dict[str, Callable[[bool], _Accumulator]] = {
    "chat_completions": _ChatCompletions,
    "completions": _ChatCompletions,
    "responses": _Responses,
    "messages": _AnthropicMessages,
    "gemini_generate": _GeminiGenerate,
    "ollama_chat": _OllamaNative,
    "ollama_generate": _OllamaNative,
}


def _new_accumulator(api: str, keep_content: bool) -> _Accumulator:
    factory = _ACCUMULATORS.get(api)
    if factory is None:
        raise ValueError(f"unsupported LLM api {api!r}")
    return factory(keep_content)


def _feed_frame(acc: _Accumulator, frame: Frame) -> None:
    if frame.tail is not None:
        usage = _salvage_object(frame.tail, acc.usage_key)
        if usage is not None:
            acc.apply_usage(usage)
        return
    if frame.data == b"[DONE]":
        acc.handle_done_marker()
        return
    payload = _loads(frame.data)
    if payload is not None:
        acc.handle_event(frame.event, payload)


def _finalize(acc: _Accumulator) -> None:
    finalize = getattr(acc, "finalize_stream", None)
    if finalize is not None:
        finalize()


# ---------------------------------------------------------------- public entry points


def _uses_ndjson(api: str) -> bool:
    return api in ("ollama_chat", "ollama_generate")


def _iter_json_array(text: str) -> Iterator[object]:
    """Yield the complete elements of a (possibly truncated) JSON array, e.g. Gemini's non-SSE stream."""
    decoder = json.JSONDecoder()
    position = text.find("[") + 1
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            return
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return
        yield value


def _looks_like_sse(body: bytes) -> bool:
    start = body.lstrip()[:16]
    return start.startswith((b"data:", b"event:", b":"))


def _consume_body(acc: _Accumulator, api: str, body: bytes, content_type: str) -> bool:
    """Feed the response body to ``acc``; returns True when it was a stream."""
    if "text/event-stream" in content_type or (
        "json" not in content_type and not _uses_ndjson(api) and _looks_like_sse(body)
    ):
        decoder: SseDecoder | NdjsonDecoder = SseDecoder(MAX_EVENT_BYTES)
    elif _uses_ndjson(api) and "ndjson" in content_type:
        decoder = NdjsonDecoder(MAX_EVENT_BYTES)
    else:
        document = _loads(body)
        if document is not None:
            acc.handle_document(document)
            return isinstance(document, list)
        if api == "gemini_generate" and body.lstrip().startswith(b"["):
            for chunk in _iter_json_array(body.decode("utf-8", "replace")):
                acc.handle_event(None, chunk)
            return True
        if _uses_ndjson(api):
            decoder = NdjsonDecoder(MAX_EVENT_BYTES)
        else:
            return False
    for frame in decoder.feed(body):
        _feed_frame(acc, frame)
    for frame in decoder.finish():
        _feed_frame(acc, frame)
    _finalize(acc)
    return True


def _request_model(provider: str, api: str, path: str, request_json: dict | None) -> str | None:
    model = _text((request_json or {}).get("model"))
    if model:
        return model[:256]
    clean = _clean_path(path)
    if provider == "azure_openai":
        deployment = _AZURE_DEPLOYMENT_PATH.match(clean)
        return deployment.group("deployment") if deployment else None
    if api == "gemini_generate":
        gemini = _GEMINI_PATH.match(clean) or _VERTEX_GEMINI_PATH.match(clean)
        return gemini.group("model") if gemini else None
    return None


def _request_streams(api: str, path: str, request_json: dict | None) -> bool:
    if api == "gemini_generate":
        return ":streamGenerateContent" in path
    stream = (request_json or {}).get("stream")
    if _uses_ndjson(api):
        return stream is not False  # Ollama's native API streams unless told not to
    return stream is True


def parse_call(
    *,
    host: str,
    path: str,
    request_body: bytes | None,
    response_body: bytes | None,
    response_content_type: str | None,
    status: int | None,
    request_json: dict | None = None,
) -> LlmCall | None:
    """Build the evidence record for one exchange, or None when it is not a recognised LLM API call.

    `request_json`, when the caller already parsed the request body, saves parsing it again."""
    if request_json is None:
        parsed = _loads(request_body) if request_body else None
        request_json = parsed if isinstance(parsed, dict) else None
    detected = detect_api(host, path, request_json)
    if detected is None:
        return None
    provider, api = detected
    call = LlmCall(
        provider=provider,
        api=api,
        request_model=_request_model(provider, api, path, request_json),
        stream=_request_streams(api, path, request_json),
        response_format=requested_response_format(api, request_json),
        status=status,
    )
    if not response_body:
        return call
    acc = _new_accumulator(api, keep_content=True)
    streamed = _consume_body(acc, api, response_body, (response_content_type or "").lower())
    call.stream = call.stream or streamed
    call.response_model = acc.response_model
    call.service_tier = acc.service_tier
    call.apply_usage(acc.usage)
    call.finish_reason = acc.finish_reason
    call.tool_calls = acc.tool_calls
    call.output_text = acc.text.value()
    call.output_truncated = acc.text.truncated
    call.tool_inputs = acc.tool_inputs
    return call


class SseUsageTracker:
    """Incremental usage tracking over a live stream, fed raw chunks split at arbitrary byte boundaries.

    State is bounded: no text is retained (only a character count) and one oversized event is reduced to
    its edges, so a long stream costs O(1) memory.
    """

    def __init__(self, provider: str, api: str) -> None:
        self.provider = provider
        self.api = api
        self._acc = _new_accumulator(api, keep_content=False)
        self._decoder: SseDecoder | NdjsonDecoder = (
            NdjsonDecoder(TRACKER_MAX_EVENT_BYTES)
            if _uses_ndjson(api)
            else SseDecoder(TRACKER_MAX_EVENT_BYTES)
        )
        self._finished = False

    def feed(self, chunk: bytes) -> None:
        if self._finished:
            return
        for frame in self._decoder.feed(chunk):
            _feed_frame(self._acc, frame)

    def finish(self) -> None:
        """Flush a final event that arrived without its terminating blank line."""
        if self._finished:
            return
        self._finished = True
        for frame in self._decoder.finish():
            _feed_frame(self._acc, frame)

    @property
    def current(self) -> UsageSnapshot:
        return self._acc.snapshot()

    @property
    def done(self) -> bool:
        return self._acc.done

    @property
    def completed(self) -> bool:
        """The stream reached its normal final event (not an error event)."""
        return self._acc.done and not self._acc.errored

    @property
    def finish_reason(self) -> str | None:
        return self._acc.finish_reason

    @property
    def service_tier(self) -> str | None:
        return self._acc.service_tier

    @property
    def response_model(self) -> str | None:
        return self._acc.response_model

    @property
    def tool_calls(self) -> int:
        return self._acc.tool_calls
