"""StreamTap: lets streaming bodies pass chunk by chunk while keeping a capped copy for the tape.

mitmproxy buffers every body by default, SSE included, which would hold an agent's token stream
until the model finished. We stream
- responses that are `text/event-stream`, or that have no Content-Length (chunked NDJSON streams from
  local models, long downloads): their size is unknown, so holding them back would delay the client;
- bodies whose Content-Length exceeds `failcore_stream_threshold`, so a 50 MB download is never held
  in memory whole.
Everything else stays buffered, so other addons (and mitmweb) still see those bodies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from failcore.llm.detect import other_readings, request_path, response_retrieval_id
from failcore.proxy.cutoff import CuttingTap, CutVerdict
from failcore.proxy.guard import StreamFailures, guarded
from failcore.proxy.session import BodyTap, FlowState, Session
from failcore.proxy.settings import AddonSettings

NO_BODY_STATUS = frozenset({101, 204, 304})


def header_of(headers: http.Headers, name: bytes) -> str | None:
    """`headers.get(name)` for a lower-case name, read straight from the fields: the same value
    (several fields joined by ", ", decoded as mitmproxy decodes them) without the mapping's layers of
    calls, which cost more than the rest of the stream-or-buffer choice that asks for it on every flow."""
    n = len(name)  # (bytes.lower keeps the length: most names are passed over without lower-casing)
    values = [
        v.decode("utf-8", "surrogateescape") for k, v in headers.fields if len(k) == n and k.lower() == name
    ]
    return ", ".join(values) if values else None


def _declared_length(headers: http.Headers) -> int | None:
    value = header_of(headers, b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def should_stream_response(flow: http.HTTPFlow, threshold: int, llm_max: int | None = None) -> bool:
    """SSE, length-less and large bodies stream through. A JSON answer to an LLM call with a
    Content-Length is buffered up to `llm_max` instead (its usage sits at the end of the document: a
    capped copy would lose it)."""
    resp = flow.response
    assert resp is not None
    if flow.request.method == "HEAD" or resp.status_code in NO_BODY_STATUS or resp.status_code < 200:
        return False
    ctype = (header_of(resp.headers, b"content-type") or "").lower()
    if "text/event-stream" in ctype:
        return True
    length = _declared_length(resp.headers)
    if llm_max is not None and _is_json(ctype) and could_be_llm_path(flow.request.path):
        threshold = max(threshold, llm_max)
    # A body of unknown length streams: buffering it would hold whatever the server sends.
    return length is None or length > threshold


def response_streams(flow: http.HTTPFlow, state: FlowState | None, settings: AddonSettings) -> bool:
    """should_stream_response with the options in force, decided once per flow: the meter, the DLP
    guard and the stream tap all ask, and must agree."""
    if state is not None and state.response_streams is not None:
        return state.response_streams
    # Streamed by another addon's choice: tapped all the same.
    assert flow.response is not None
    streams = bool(flow.response.stream) or should_stream_response(
        flow, settings.stream_threshold, settings.llm_body_max
    )
    if state is not None:
        state.response_streams = streams
    return streams


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def first_verdict(
    guards: list[Callable[[bytes], CutVerdict | None]],
    failed: Callable[[Exception, object], CutVerdict | None] | None = None,
) -> Callable[[bytes], CutVerdict | None]:
    """The first cut verdict of `guards` on a chunk. A guard that raises is reported to `failed`
    (failcore.proxy.guard.StreamFailures.verdict), whose verdict stands; it is still asked about the
    next chunk (left out, one raise would switch it off for the rest of the stream)."""

    def check(chunk: bytes) -> CutVerdict | None:
        for guard in guards:
            try:
                verdict = guard(chunk)
            except Exception as e:
                if failed is None:
                    raise
                verdict = failed(e, guard)
            if verdict is not None:
                return verdict
        return None

    return check


_LLM_PATH_SUFFIXES = (
    "/chat/completions",
    "/completions",
    "/responses",
    "/responses/compact",
    "/messages",
    "/messages/batches",
    "/api/chat",
    "/api/generate",
    ":generatecontent",
    ":streamgeneratecontent",
    "%3ageneratecontent",  # Gemini's colon percent-encoded: Google's front end decodes it
    "%3astreamgeneratecontent",
    # AWS Bedrock runtime: /model/{id}/invoke[-with-response-stream], /model/{id}/converse[-stream]
    "/invoke",
    "/invoke-with-response-stream",
    "/converse",
    "/converse-stream",
)


@functools.lru_cache(maxsize=4096)
def could_be_llm_path(path: str) -> bool:
    """Spelled as the origin resolves it (`/v1/chat/completion%73`), or as a routing server reads it
    (`/v1/chat%2Fcompletions`, `/v1/chat/completions;x=1`), as failcore.llm.detect reads it.

    Remembered per path (a function of the string alone): an exchange asks up to three times (the
    stream-or-buffer choices, the meter) and an agent's paths repeat."""
    return _llm_suffix(request_path(path)) or any(_llm_suffix(alias) for alias in other_readings(path))


def _llm_suffix(clean: str) -> bool:
    clean = clean.lower().rstrip("/")
    return clean.endswith(_LLM_PATH_SUFFIXES) or (
        "/responses/" in clean and response_retrieval_id(clean) is not None
    )


def should_stream_request(flow: http.HTTPFlow, threshold: int, llm_max: int | None = None) -> bool:
    """Large uploads stream through; an LLM call's request with a Content-Length is buffered up to
    `llm_max`, because metering, budgets and DLP blocking all need to read it before it is forwarded."""
    length = _declared_length(flow.request.headers)
    if llm_max is not None and could_be_llm_path(flow.request.path):
        threshold = max(threshold, llm_max)
    if length is None:
        return "chunked" in (header_of(flow.request.headers, b"transfer-encoding") or "").lower()
    return length > threshold


def request_streams(flow: http.HTTPFlow, settings: AddonSettings, state: FlowState | None = None) -> bool:
    """should_stream_request with the options in force, decided once per flow when it has a state: the
    hold, the budget and DLP guards and the stream tap all ask at requestheaders, and must agree."""
    if state is not None and state.request_streams is not None:
        return state.request_streams
    # Streamed by another addon's choice (failcore.proxy.hold takes back the ones it holds).
    streams = bool(flow.request.stream) or should_stream_request(
        flow, settings.stream_threshold, settings.llm_body_max
    )
    if state is not None:
        state.request_streams = streams
    return streams


class ThenTap:
    """Another addon's `stream` callable, then failcore's tap on what it yields: failcore records and
    scans the bytes that leave. (mitmproxy takes bytes or an iterable of bytes from either.)"""

    __slots__ = ("first", "then")

    def __init__(self, first: Callable[[bytes], Any], then: Callable[[bytes], Any]) -> None:
        self.first = first
        self.then = then

    def __call__(self, chunk: bytes) -> bytes | tuple[bytes, ...]:
        out = self.first(chunk)
        if isinstance(out, bytes):
            return self.then(out) if out else out
        passed: list[bytes] = []
        for part in out:
            got = self.then(part) if part else part
            if isinstance(got, bytes):
                passed.append(got)
            else:
                passed.extend(got)
        return tuple(passed)


def _chain(existing: object, tap: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """`tap`, behind a stream callable another addon set (True only asks mitmproxy to stream)."""
    return ThenTap(existing, tap) if callable(existing) else tap


class StreamTap:
    def __init__(self, session: Session) -> None:
        self.session = session

    @guarded("streamtap.requestheaders")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or isinstance(flow.request.stream, BodyTap | ThenTap):
            return
        state = self.session.flows.get(flow.id)
        if state is not None and state.decision is not None and state.decision.decision == "BLOCK":
            # It will be answered by the gate; streaming (another addon's choice) would forward it first.
            flow.request.stream = False
            return
        if flow.metadata.get("failcore_held"):
            return  # failcore.proxy.hold: the policy decides on the whole body before it leaves
        settings = self.session.settings
        if flow.request.stream is True or request_streams(flow, settings, state):
            state = self.session.state(flow)
            tap = BodyTap(settings.body_cap, failed=StreamFailures(self.session, flow, state, "request").stop)
            tap.observers.extend(state.request_observers)
            state.request_tap = tap
            flow.request.stream = _chain(flow.request.stream, tap)

    @guarded("streamtap.responseheaders")
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is None or isinstance(flow.response.stream, BodyTap | CuttingTap | ThenTap):
            return
        settings = self.session.settings
        if response_streams(flow, self.session.flows.get(flow.id), settings):
            state = self.session.state(flow)
            failures = StreamFailures(self.session, flow, state, "response")
            tap = BodyTap(settings.body_cap, failed=failures.stop)
            tap.observers.extend(state.stream_observers)
            state.response_tap = tap
            flow.response.stream = _chain(flow.response.stream, response_stream(flow, state, tap, failures))


def response_stream(
    flow: http.HTTPFlow, state: FlowState, tap: BodyTap, failures: StreamFailures
) -> Callable[[bytes], Any]:
    """failcore's part of a response stream: `tap`, behind the cut guards when there are any."""
    if state.cut_guards:
        return CuttingTap(flow, first_verdict(state.cut_guards, failures.verdict), inner=tap, state=state)
    return tap


def rechain_response(session: Session, flow: http.HTTPFlow, state: FlowState) -> None:
    """Put failcore's part (its tap, state.response_tap) back behind a response `stream` another addon
    set in its place after failcore's hook ran (failcore.proxy.tail)."""
    assert flow.response is not None and state.response_tap is not None
    failures = StreamFailures(session, flow, state, "response")
    part = response_stream(flow, state, state.response_tap, failures)
    flow.response.stream = _chain(flow.response.stream, part)


def rechain_request(flow: http.HTTPFlow, state: FlowState) -> None:
    """The same for a request `stream` (failcore's part there is the tap alone)."""
    assert state.request_tap is not None
    flow.request.stream = _chain(flow.request.stream, state.request_tap)
