"""What a budget charges for one LLM call when the provider did not say, and what a response already cost.

**Estimate.** A call whose usage the provider never reported (a Chat Completions stream without
`stream_options.include_usage`, a legacy Completions stream, a Responses API call created with
`background: true`, a stream cut before its final usage) is not free: budgets charge an estimate that
errs high, so a limit is reached early rather than walked past:

* input tokens: one per byte of the request body as the upstream received it (decoded). No byte-level
  BPE tokenizer (OpenAI's, Anthropic's, Llama's) makes more tokens of a text than it has bytes, and the
  JSON around the messages outweighs the few tokens of chat framing per message;
* output tokens: one per character of generated text seen in the response (every choice's text and
  refusal, every tool call's name and arguments, visible thinking), plus `FRAMING_TOKENS` for the answer
  and for each tool call (the tokens that end a message or frame a call), at most the request's cap
  on generated tokens × `n` — the largest of `max_tokens`, `max_completion_tokens`,
  `max_output_tokens`, … when it sets several (an upstream may honour any one of them) — but only
  while the text seen could be that many tokens: at most `MAX_CHARS_PER_TOKEN` characters each, and
  no more words (runs without whitespace) than tokens. More text than the cap could carry shows the
  upstream ignored it, and then every character is charged;
* hidden reasoning: a model that reasons without showing it (OpenAI's o-series and gpt-5: the stream
  carries only the answer, and the recorded gpt-5-nano calls spent 64 to 960 reasoning tokens on a
  one-line answer) is charged its whole cap on generated tokens (which counts reasoning too), or
  `HIDDEN_REASONING_TOKENS` when the request sets no cap or the upstream ignored it — when the
  request names such a model or asks for reasoning (`reasoning_effort`, `reasoning`). Set
  `stream_options.include_usage` to be charged what was used;
* an input count the provider did report before the stream ended (Anthropic's `message_start`) is
  taken as it is; a partial output count when it is higher than the estimate.

* a Message Batch (`POST /v1/messages/batches`), whose usage is known only when its results are fetched
  (hours later, by a call failcore does not meter), is charged at submission: one input token per byte
  of the batch body and, for each request, its whole `max_tokens` (`HIDDEN_REASONING_TOKENS` for a
  request without one, or for a body failcore could not read) — the most the batch can spend;
* an AWS Bedrock streaming operation (`invoke-with-response-stream`, `converse-stream`) answers in AWS's
  binary event-stream framing: one output token per byte of the response (`output_chars` is its size as
  it decodes: a gzip'd answer is not cheaper); so does an answer failcore cannot read for a coding it
  does not decode (its wire size; a streamed one's from where its decoding stopped).

An image sent by URL costs more tokens than its URL has bytes. The estimate is recorded on the call's event
(`llm.budget_estimate`, a `usage_estimated` warning); `usage` itself stays unknown, never 0.

**Charged once.** A Responses API response can be fetched again (`GET /v1/responses/{id}`, the way a
`background: true` call is polled for its result): `ChargedResponses` remembers what each response id was
charged so far (bounded, least recently charged forgotten first) and a later fetch charges only what its
usage adds, never the same tokens twice.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from failcore.budget import Usage
from failcore.llm.detect import batch_requests
from failcore.llm.typed import as_count, as_dict

# Response ids remembered per proxy run; past that the least recently charged is forgotten (a fetch of
# it is then charged again: too much, never too little).
CHARGED_RESPONSES_MAX = 8192

# Tokens an answer, and each tool call in it, costs beyond its characters (measured on the recorded
# traffic in tests/data/conformance: at most 1 for an answer, 12 for a call beyond its name and arguments).
FRAMING_TOKENS = 4
# The most characters one token decodes to. Measured on OpenAI's public BPE vocabularies (js-tiktoken
# 1.0.21's ranks): r50k/p50k 66 (" ===…"), cl100k_base and o200k_base 128 (a run of 128 spaces; the
# longest non-blank is 114, "//---…"); Llama 3 extends cl100k's vocabulary. More characters than
# cap × this cannot be cap tokens of those tokenizers, so the upstream did not honour the cap. A
# tokenizer with longer tokens (Anthropic's is not public) only makes the estimate err high: its
# honest long-token answers are then charged per character rather than at the cap.
MAX_CHARS_PER_TOKEN = 128
# What a model that hides its reasoning is charged when no cap bounds it: the largest output limit of
# OpenAI's reasoning models (gpt-5: 128,000 tokens; o1, o3, o4-mini: 100,000).
HIDDEN_REASONING_TOKENS = 128_000
# Models that reason without streaming their reasoning (`openai/o3` as a router names it too); a
# `-chat` variant (gpt-5-chat-latest) does not reason.
_HIDDEN_REASONING_MODEL = re.compile(r"^(?:[\w.-]+/)?(?:o\d|gpt-5)(?![\w.]*-chat)", re.IGNORECASE)
# Where each API puts the cap on generated tokens.
_MAX_OUTPUT_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


@dataclass(frozen=True, slots=True)
class Estimate:
    input_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def reports_usage(api: str, request_json: dict | None) -> bool:
    """Whether a stream of this API will end with its usage: all do but a Chat Completions or legacy
    Completions stream without `stream_options.include_usage`."""
    if api not in ("chat_completions", "completions"):
        return True
    return as_dict(as_dict(request_json).get("stream_options")).get("include_usage") is True


def max_output_tokens(request_json: dict | None) -> int | None:
    """The most tokens the request lets the model generate (over all `n` choices), None when unset.

    When the request names several caps (`max_completion_tokens` and `max_tokens`, a Gemini
    `generationConfig` beside a top-level key, …) the largest counts: which one the upstream honours is
    its own choice, and the smallest would let an upstream that honours another be charged too little.
    Ollama's `num_predict` below 0 means no cap."""
    if not request_json:
        return None
    config = as_dict(request_json.get("generationConfig") or request_json.get("generation_config"))
    options = as_dict(request_json.get("options"))  # Ollama
    num_predict = options.get("num_predict")
    if isinstance(num_predict, int) and not isinstance(num_predict, bool) and num_predict < 0:
        return None
    found = [as_count(request_json.get(k)) for k in _MAX_OUTPUT_KEYS]
    found += [as_count(config.get("maxOutputTokens")), as_count(config.get("max_output_tokens"))]
    found.append(as_count(num_predict))
    caps = [c for c in found if c]
    if not caps:
        return None
    candidates = as_count(config.get("candidateCount")) or as_count(config.get("candidate_count"))  # Gemini
    return max(caps) * max(as_count(request_json.get("n")) or 1, candidates or 1)


def hides_reasoning(request_json: dict | None, model: str | None = None) -> bool:
    """Whether the call may spend reasoning tokens its stream does not show: the request names a model
    that reasons hidden, or asks for reasoning (other than `reasoning_effort: none`)."""
    request = as_dict(request_json)
    effort = request.get("reasoning_effort")
    if effort is None:
        effort = as_dict(request.get("reasoning")).get("effort")
    if isinstance(effort, str) and effort.lower() == "none":
        return False
    reasoning = request.get("reasoning")
    asked = reasoning not in (None, False) and as_dict(reasoning).get("enabled") is not False
    if effort is not None or asked:
        return True
    named = request.get("model")
    return any(isinstance(m, str) and _HIDDEN_REASONING_MODEL.match(m) is not None for m in (named, model))


def estimate_usage(
    *,
    request_bytes: int,
    output_chars: int,
    request_json: dict | None,
    tool_calls: int = 0,
    reported_input: int | None = None,
    reported_output: int | None = None,
    output_words: int = 0,
    hidden_reasoning: bool = False,
) -> Estimate:
    """The tokens charged for a call with unknown usage (see the module docstring). `output_words`: runs
    of non-whitespace in the generated text; `hidden_reasoning`: hides_reasoning() of the request, for
    a finished call (a stream still going is measured by what it showed)."""
    output = output_chars + FRAMING_TOKENS * (1 + tool_calls)
    cap = max_output_tokens(request_json)
    honoured = cap is not None and output_chars <= cap * MAX_CHARS_PER_TOKEN and output_words <= cap
    if honoured:
        assert cap is not None
        output = min(output, cap)  # else more text than the cap could carry: it was not honoured
    if hidden_reasoning:
        output = max(output, cap if honoured and cap is not None else HIDDEN_REASONING_TOKENS)
    return Estimate(
        input_tokens=reported_input if reported_input is not None else request_bytes,
        output_tokens=max(output, reported_output or 0),
    )


def batch_estimate(*, request_bytes: int, request_json: dict | None) -> Estimate:
    """What a Message Batch is charged when it is submitted (see the module docstring)."""
    caps = [max_output_tokens(params) or HIDDEN_REASONING_TOKENS for params in batch_requests(request_json)]
    if not caps:
        caps = [HIDDEN_REASONING_TOKENS]
    return Estimate(input_tokens=request_bytes, output_tokens=sum(caps) + FRAMING_TOKENS * len(caps))


class ChargedResponses:
    """What budgets charged per response id, so fetching a response again never charges it twice."""

    def __init__(self, limit: int = CHARGED_RESPONSES_MAX) -> None:
        self.limit = limit
        self._charged: OrderedDict[tuple[str, str], Usage] = OrderedDict()

    def settle(self, key: tuple[str, str] | None, usage: Usage) -> Usage:
        """The part of `usage` not yet charged for this response (all of it for a first sight or no key);
        the response is then recorded as charged the larger of each count."""
        if key is None:
            return usage
        before = self._charged.pop(key, None)
        charged = usage if before is None else _larger(before, usage)
        self._charged[key] = charged
        if len(self._charged) > self.limit:
            self._charged.popitem(last=False)
        return usage if before is None else _minus(charged, before, requests=usage.requests)


def _larger(a: Usage, b: Usage) -> Usage:
    return Usage(
        requests=0,
        input_tokens=max(a.input_tokens, b.input_tokens),
        output_tokens=max(a.output_tokens, b.output_tokens),
        total_tokens=max(a.total_tokens, b.total_tokens),
        cost_usd=max(a.cost_usd, b.cost_usd),
        tool_calls=max(a.tool_calls, b.tool_calls),
    )


def _minus(a: Usage, b: Usage, *, requests: int) -> Usage:
    return Usage(
        requests=requests,
        input_tokens=a.input_tokens - b.input_tokens,
        output_tokens=a.output_tokens - b.output_tokens,
        total_tokens=a.total_tokens - b.total_tokens,
        cost_usd=a.cost_usd - b.cost_usd,
        tool_calls=a.tool_calls - b.tool_calls,
    )
