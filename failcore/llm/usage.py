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
from collections.abc import Iterator

from failcore.framing import MAX_EVENT_BYTES, NdjsonDecoder, SseDecoder
from failcore.llm.call import LlmCall, UsageSnapshot
from failcore.llm.detect import (
    _KNOWN_OPENAI_COMPATIBLE_HOSTS,
    anthropic_prefill,
    detect_api,
    request_model,
    request_streams,
    requested_response_format,
    uses_ndjson,
)
from failcore.llm.providers import feed_frame, finish_stream, new_accumulator
from failcore.llm.providers.base import OUTPUT_TEXT_CAP, Accumulator
from failcore.llm.typed import loads_or_none

# Where each part lives: call.py (LlmCall, UsageSnapshot), detect.py (which API), framing.py (SSE and
# NDJSON), providers/ (one accumulator per API family); this module puts them together.
__all__ = [
    "OUTPUT_TEXT_CAP",
    "_KNOWN_OPENAI_COMPATIBLE_HOSTS",
    "LlmCall",
    "SseUsageTracker",
    "UsageSnapshot",
    "anthropic_prefill",
    "detect_api",
    "parse_call",
    "requested_response_format",
]

TRACKER_MAX_EVENT_BYTES = 1024 * 1024


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


def _consume_body(acc: Accumulator, api: str, body: bytes, content_type: str) -> bool:
    """Feed the response body to ``acc``; returns True when it was a stream."""
    if "text/event-stream" in content_type or (
        "json" not in content_type and not uses_ndjson(api) and _looks_like_sse(body)
    ):
        decoder: SseDecoder | NdjsonDecoder = SseDecoder(MAX_EVENT_BYTES)
    elif uses_ndjson(api) and "ndjson" in content_type:
        decoder = NdjsonDecoder(MAX_EVENT_BYTES)
    else:
        document = loads_or_none(body)
        if document is not None:
            acc.handle_document(document)
            return isinstance(document, list)
        if api == "gemini_generate" and body.lstrip().startswith(b"["):
            for chunk in _iter_json_array(body.decode("utf-8", "replace")):
                acc.handle_event(None, chunk)
            return True
        if uses_ndjson(api):
            decoder = NdjsonDecoder(MAX_EVENT_BYTES)
        else:
            return False
    for frame in decoder.feed(body):
        feed_frame(acc, frame)
    for frame in decoder.finish():
        feed_frame(acc, frame)
    finish_stream(acc)
    return True


def parse_call(
    *,
    host: str,
    path: str,
    request_body: bytes | None,
    response_body: bytes | None,
    response_content_type: str | None,
    status: int | None,
    request_json: dict | None = None,
    detected: tuple[str, str] | None = None,
) -> LlmCall | None:
    """Build the evidence record for one exchange, or None when it is not a recognised LLM API call.

    `request_json`, when the caller already parsed the request body, saves parsing it again; `detected`,
    the (provider, api) the caller recognised when the request went out (an unreadable body included)."""
    if request_json is None:
        parsed = loads_or_none(request_body) if request_body else None
        request_json = parsed if isinstance(parsed, dict) else None
    if detected is None:
        detected = detect_api(
            host, path, request_json, unreadable=bool(request_body) and request_json is None
        )
    if detected is None:
        return None
    call = _request_call(detected, path, request_json, status)
    if not response_body:
        return call
    acc = new_accumulator(detected[1], keep_content=True)
    streamed = _consume_body(acc, detected[1], response_body, (response_content_type or "").lower())
    _absorb(call, acc, streamed)
    return call


def _request_call(
    detected: tuple[str, str], path: str, request_json: dict | None, status: int | None
) -> LlmCall:
    """What the request alone says of a call."""
    provider, api = detected
    return LlmCall(
        provider=provider,
        api=api,
        request_model=request_model(provider, api, path, request_json),
        stream=request_streams(api, path, request_json),
        response_format=requested_response_format(api, request_json),
        status=status,
    )


def _absorb(call: LlmCall, acc: Accumulator, streamed: bool) -> None:
    """What an accumulator that read the whole answer says of the call."""
    call.stream = call.stream or streamed
    call.response_model = acc.response_model
    call.service_tier = acc.service_tier
    call.apply_usage(acc.usage)
    call.finish_reason = acc.finish_reason
    call.tool_calls = acc.tool_calls
    call.output_text = acc.text.value()
    call.output_truncated = acc.text.truncated
    call.tool_inputs = acc.tool_inputs
    call.response_id = acc.response_id


class SseUsageTracker:
    """Incremental usage tracking over a live stream, fed raw chunks split at arbitrary byte boundaries.

    State is bounded: one oversized event is reduced to its edges, and the content (text, tool inputs)
    is kept only over the first `content_limit` bytes (at most TRACKER_MAX_EVENT_BYTES; none by default),
    past which only counts are (so a long stream costs O(1) memory). While it is kept, the tracker can
    stand in for parse_call over the stream's bytes (`streamed_call`): the answer is parsed once.
    """

    def __init__(self, provider: str, api: str, content_limit: int = 0) -> None:
        self.provider = provider
        self.api = api
        self._content_limit = min(content_limit, TRACKER_MAX_EVENT_BYTES)
        self._acc = new_accumulator(api, keep_content=self._content_limit > 0)
        self._decoder: SseDecoder | NdjsonDecoder = (
            NdjsonDecoder(TRACKER_MAX_EVENT_BYTES)
            if uses_ndjson(api)
            else SseDecoder(TRACKER_MAX_EVENT_BYTES)
        )
        self._finished = False
        # The bytes fed and folded (a chunk counts once it has been: one that raised half-way does not).
        self.fed = 0

    def feed(self, chunk: bytes) -> None:
        if self._finished:
            return
        if self._acc.keep_content and self.fed + len(chunk) > self._content_limit:
            self._acc.drop_content()
        for frame in self._decoder.feed(chunk):
            feed_frame(self._acc, frame)
        self.fed += len(chunk)

    def finish(self) -> None:
        """Flush a final event that arrived without its terminating blank line."""
        if self._finished:
            return
        self._finished = True
        for frame in self._decoder.finish():
            feed_frame(self._acc, frame)

    def streamed_call(
        self,
        *,
        path: str,
        status: int | None,
        request_json: dict | None,
        content_type: str | None,
        seen: int,
    ) -> LlmCall | None:
        """parse_call(response_body=B, detected=(provider, api), ...) for B the first `seen` bytes of the
        answer, built from what the tracker folded as they passed instead of parsing them again (it ends
        the tracker's stream: `finish`); None where it cannot stand in for it exactly: B is not every
        byte it was fed and folded, its content was dropped (past `content_limit`; an event can then
        exceed TRACKER_MAX_EVENT_BYTES), or parse_call would read B with another decoder than the
        tracker's (the Content-Type)."""
        media = (content_type or "").lower()
        as_sse = "text/event-stream" in media
        decoder_agrees = (not as_sse and "ndjson" in media) if uses_ndjson(self.api) else as_sse
        if not decoder_agrees or not self._acc.keep_content or seen != self.fed:
            return None
        self.finish()
        call = _request_call((self.provider, self.api), path, request_json, status)
        if seen:
            finish_stream(self._acc)
            _absorb(call, self._acc, streamed=True)
        return call

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

    @property
    def response_id(self) -> str | None:
        return self._acc.response_id

    @property
    def generated_chars(self) -> int:
        return self._acc.generated_chars

    @property
    def generated_words(self) -> int:
        return self._acc.generated_words
