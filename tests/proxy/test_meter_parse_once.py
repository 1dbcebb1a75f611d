"""A streamed (SSE, NDJSON) answer is parsed once: the usage tracker, which reads every event as it
passes, also keeps what parse_call would read of the tap's copy (text, tool inputs, model, finish), and
the call is built from it. On every recorded streamed exchange (openllmetry's cassettes, both sets), cut
into random chunks, the call, cost, charge and warnings are parse_call's over the whole answer, the
usage is what the provider reported (tests/llm_replay.reported_usage, no code shared with failcore);
where the tracker did not see exactly the tap's copy (past the cap, a cut), the copy is parsed as before."""

from __future__ import annotations

import ast
import gzip
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

import failcore.llm.usage as usage_module
from failcore.llm import compute_cost, parse_call
from failcore.llm.prices import seen_cost
from failcore.llm.providers import ACCUMULATORS
from failcore.llm.usage import SseUsageTracker
from failcore.proxy.cutoff import CutVerdict
from failcore.proxy.gate import PolicyGate
from failcore.proxy.meter import LlmMeter, cost_warnings
from failcore.proxy.streamtap import StreamTap
from tests.addon_harness import Harness, concerns
from tests.llm_replay import CASSETTES, reported_usage

REPORT_CASSETTES = Path(__file__).parent.parent / "data" / "openllmetry" / "report-cassettes.jsonl"


def _content_type(exchange: dict[str, Any]) -> str:
    raw = exchange["response_headers"]
    headers = raw if isinstance(raw, dict) else ast.literal_eval(raw)
    return headers.get("content-type") or ""


def _streamed_exchanges() -> list[dict[str, Any]]:
    found = []
    for path in (CASSETTES, REPORT_CASSETTES):
        for line in path.read_text(encoding="utf-8").splitlines():
            exchange = json.loads(line) if line else None
            media = _content_type(exchange).lower() if exchange else ""
            if exchange and ("event-stream" in media or "ndjson" in media):
                found.append(exchange)
    return found


STREAMED = _streamed_exchanges()


def _events_in(body: str, content_type: str) -> int:
    """The events of a recorded body, counted without failcore's decoder: NDJSON lines, or SSE blocks
    (blank-line separated) with a data line."""
    if "ndjson" in content_type:
        return sum(1 for line in body.split("\n") if line.strip())
    blocks = body.replace("\r\n", "\n").split("\n\n")
    return sum(1 for block in blocks if any(line.startswith("data:") for line in block.split("\n")))


def _chunks(body: bytes, seed: int) -> Iterator[bytes]:
    """The body in random pieces (1 to 400 bytes: an event split anywhere), or whole for seed 0."""
    rnd = random.Random(seed)
    start = 0
    while start < len(body):
        size = rnd.randint(1, 400) if seed else len(body)
        yield body[start : start + size]
        start += size


def _stream(
    h: Harness, exchange: dict[str, Any], seed: int, *, wire: bytes | None = None, coding: str | None = None
) -> http.HTTPFlow:
    """The exchange through the hooks as mitmproxy calls them, its answer through the response stream."""
    host, port = exchange["host"].rsplit(":", 1)
    request = tutils.treq(
        host=host,
        port=int(port),
        scheme=b"https",
        method=exchange["method"].encode(),
        path=exchange["path"].encode(),
        headers=http.Headers([(b"content-type", b"application/json")]),
        content=exchange["request_body"].encode(),
    )
    flow = tflow.tflow(req=request)
    h.hooks(flow, "requestheaders", "request")
    headers = [(b"content-type", _content_type(exchange).encode())]
    if coding:
        headers.append((b"content-encoding", coding.encode()))
    flow.response = tutils.tresp(status_code=exchange["status"], headers=http.Headers(headers), content=None)
    h.hooks(flow, "responseheaders")
    stream = flow.response.stream
    assert callable(stream)
    for chunk in _chunks(wire if wire is not None else exchange["response_body"].encode(), seed):
        stream(chunk)
    stream(b"")
    h.hooks(flow, "response")
    return flow


def _parsed(exchange: dict[str, Any], body: bytes | None, llm: Any) -> Any:
    """parse_call over `body` as the meter called it before (request parsed, provider recognised)."""
    assert llm is not None
    call = parse_call(
        host=exchange["host"],
        path=exchange["path"],
        request_body=None,
        response_body=body,
        response_content_type=_content_type(exchange),
        status=exchange["status"],
        request_json=json.loads(exchange["request_body"]),
        detected=(llm.provider, llm.api),
    )
    assert call is not None
    call.stream = True
    return call


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_recorded_stream_is_metered_as_parse_call_reads_it_whole(seed: int, confdir: Path) -> None:
    assert len(STREAMED) >= 150
    families = set()
    with concerns(PolicyGate, LlmMeter, StreamTap, confdir=confdir) as h:
        prices = h.get(LlmMeter).price_table()
        for exchange in STREAMED:
            flow = _stream(h, exchange, seed)
            llm = h.state(flow).llm
            assert llm is not None and llm.call is not None, exchange["id"]
            families.add(llm.api)
            expected = _parsed(exchange, exchange["response_body"].encode(), llm)
            assert llm.call.to_dict() == expected.to_dict(), exchange["id"]
            cost = compute_cost(expected, prices)
            assert llm.cost == cost
            assert llm.charge_usd == (cost.usd if cost.usd is not None else seen_cost(expected, prices))
            assert llm.warnings == cost_warnings(expected, cost)
            reported = reported_usage(exchange)
            if reported is not None and llm.call.usage_known:
                assert (llm.call.input_tokens, llm.call.output_tokens) == (
                    reported.input_tokens,
                    reported.output_tokens,
                ), exchange["id"]
            h.session.flows.pop(flow.id)
        assert h.session.internal_errors == 0
    assert {"chat_completions", "completions", "responses", "messages", "ollama_generate"} <= families


def test_a_recorded_stream_is_parsed_once(confdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every event of the answer is folded once (on main: by the tracker, then again by parse_call)."""
    folded: list[object] = []
    fold = usage_module.feed_frame

    def counted(acc: Any, frame: Any) -> None:
        folded.append(frame)
        fold(acc, frame)

    monkeypatch.setattr(usage_module, "feed_frame", counted)
    with concerns(PolicyGate, LlmMeter, StreamTap, confdir=confdir) as h:
        for exchange in STREAMED:
            folded.clear()
            flow = _stream(h, exchange, seed=7)
            call = h.state(flow).llm.call  # type: ignore[union-attr]
            assert call is not None
            events = _events_in(exchange["response_body"], _content_type(exchange).lower())
            assert len(folded) == events, exchange["id"]
            h.session.flows.pop(flow.id)


def _longest_with_text() -> dict[str, Any]:
    with_text = [e for e in STREAMED if "openai" in e["host"] and '"content":"' in e["response_body"]]
    return max(with_text, key=lambda e: len(e["response_body"]))


def test_a_stream_longer_than_the_tapes_cap_reads_the_text_of_the_copy_as_before(confdir: Path) -> None:
    """Past `failcore_body_cap` the tracker keeps no text: the tap's capped copy is parsed, as before
    (its text is the copy's), and the usage is the tracker's, which saw every chunk."""
    exchange = _longest_with_text()
    body = exchange["response_body"].encode()
    cap = len(body) // 2
    with concerns(PolicyGate, LlmMeter, StreamTap, confdir=confdir, failcore_body_cap=cap) as h:
        flow = _stream(h, exchange, seed=3)
        llm = h.state(flow).llm
        call = llm.call  # type: ignore[union-attr]
        whole = _parsed(exchange, body, llm)
        prefix = _parsed(exchange, body[:cap], llm)
    assert call is not None and prefix.output_text and whole.output_text
    assert call.output_text == prefix.output_text != whole.output_text
    assert (call.input_tokens, call.output_tokens, call.usage_known) == (
        whole.input_tokens,
        whole.output_tokens,
        whole.usage_known,
    )


@pytest.mark.parametrize("after_the_meter", [True, False])
def test_a_stream_cut_mid_chunk_reads_what_reached_the_client(after_the_meter: bool, confdir: Path) -> None:
    """A guard stops the stream in the middle of a chunk: the client got part of it, which the tracker
    read whole (the guard after the meter's) or not at all (before it). The call is parse_call's over
    what reached the client (the tap's copy), as before."""
    exchange = _longest_with_text()
    body = exchange["response_body"].encode()
    with concerns(PolicyGate, LlmMeter, StreamTap, confdir=confdir) as h:
        host, port = exchange["host"].rsplit(":", 1)
        request = tutils.treq(
            host=host,
            port=int(port),
            scheme=b"https",
            method=b"POST",
            path=exchange["path"].encode(),
            content=exchange["request_body"].encode(),
        )
        flow = tflow.tflow(req=request)
        h.hooks(flow, "requestheaders", "request")
        flow.response = tutils.tresp(
            headers=http.Headers([(b"content-type", _content_type(exchange).encode())]), content=None
        )
        seen = [0]

        def cut_halfway(chunk: bytes) -> CutVerdict | None:
            seen[0] += len(chunk)
            return CutVerdict("budget", keep=len(chunk) // 3) if seen[0] > len(body) // 2 else None

        if not after_the_meter:
            h.state(flow).cut_guards.append(cut_halfway)
        h.hooks(flow, "responseheaders")
        if after_the_meter:
            h.state(flow).cut_guards.append(cut_halfway)
        for chunk in _chunks(body, seed=5):
            flow.response.stream(chunk)  # type: ignore[operator]
        h.hooks(flow, "response")
        tap = h.state(flow).response_tap
        llm = h.state(flow).llm
        assert tap is not None and llm is not None and llm.call is not None
        assert 0 < tap.size < seen[0] < len(body)  # cut: part of the last chunk read reached the client
        forwarded = _parsed(exchange, bytes(tap.kept), llm)
    assert forwarded.output_text and llm.call.output_text == forwarded.output_text


def test_a_compressed_stream_reads_no_text_as_before(confdir: Path) -> None:
    """A gzip'd stream: the tracker reads its inflated events for usage; the call keeps no text (the
    tap's copy is compressed), as before."""
    exchange = _longest_with_text()
    body = exchange["response_body"].encode()
    with concerns(PolicyGate, LlmMeter, StreamTap, confdir=confdir) as h:
        flow = _stream(h, exchange, seed=4, wire=gzip.compress(body, mtime=0), coding="gzip")
        llm = h.state(flow).llm
        call = llm.call  # type: ignore[union-attr]
        whole = _parsed(exchange, body, llm)
    assert call is not None and call.output_text is None and call.tool_inputs == []
    assert (call.input_tokens, call.output_tokens, call.response_model) == (
        whole.input_tokens,
        whole.output_tokens,
        whole.response_model,
    )


# The API families with no recorded stream: events as their documentation shows them.
GEMINI_SSE = b"".join(
    b"data: " + json.dumps(event).encode() + b"\r\n\r\n"
    for event in (
        {
            "candidates": [{"content": {"parts": [{"text": "The sky "}], "role": "model"}}],
            "modelVersion": "gemini-2.5-flash",
        },
        {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]}}]},
        {
            "candidates": [{"content": {"parts": [{"text": "is blue."}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 5, "totalTokenCount": 14},
        },
    )
)
CONVERSE_SSE = b"".join(
    b"data: " + json.dumps(event).encode() + b"\n\n"
    for event in (
        {"messageStart": {"role": "assistant"}},
        {"contentBlockDelta": {"delta": {"text": "Hello"}, "contentBlockIndex": 0}},
        {"contentBlockDelta": {"delta": {"text": " there"}, "contentBlockIndex": 0}},
        {"messageStop": {"stopReason": "end_turn"}},
        {"metadata": {"usage": {"inputTokens": 12, "outputTokens": 3, "totalTokens": 15}}},
    )
)


def _recorded_body(api_path: str, media: str) -> bytes:
    return next(
        e["response_body"].encode()
        for e in STREAMED
        if e["path"].startswith(api_path) and media in _content_type(e) and e["status"] == 200
    )


def _family_streams() -> list[tuple[str, bytes, str]]:
    anthropic = _recorded_body("/v1/messages", "event-stream")
    return [
        ("gemini_generate", GEMINI_SSE, "text/event-stream"),
        ("bedrock_converse", CONVERSE_SSE, "text/event-stream"),
        ("bedrock_invoke", anthropic, "text/event-stream"),
        ("message_batches", anthropic, "text/event-stream"),
        ("messages", anthropic, "text/event-stream"),
        ("responses", _recorded_body("/v1/responses", "event-stream"), "text/event-stream"),
        ("chat_completions", _recorded_body("/v1/chat/completions", "event-stream"), "text/event-stream"),
        ("completions", _recorded_body("/v1/completions", "event-stream"), "text/event-stream"),
        ("ollama_chat", _recorded_body("/api/chat", "ndjson"), "application/x-ndjson"),
        ("ollama_generate", _recorded_body("/api/generate", "ndjson"), "application/x-ndjson"),
    ]


def test_the_families_cover_every_api() -> None:
    assert {api for api, _, _ in _family_streams()} == set(ACCUMULATORS)


@pytest.mark.parametrize(
    ("api", "body", "media"), _family_streams(), ids=lambda v: v if isinstance(v, str) else ""
)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_tracker_stands_in_for_parse_call_for_every_api(
    api: str, body: bytes, media: str, seed: int
) -> None:
    tracker = SseUsageTracker("p", api, content_limit=len(body))
    for chunk in _chunks(body, seed):
        tracker.feed(chunk)
    call = tracker.streamed_call(path="/x", status=200, request_json=None, content_type=media, seen=len(body))
    whole = parse_call(
        host="h:443",
        path="/x",
        request_body=None,
        response_body=body,
        response_content_type=media,
        status=200,
        detected=("p", api),
    )
    assert call is not None and whole is not None
    whole.stream = True
    assert call.to_dict() == whole.to_dict()


def test_the_tracker_does_not_stand_in_where_it_cannot_be_exact() -> None:
    body = _recorded_body("/v1/chat/completions", "event-stream")
    kwargs: dict[str, Any] = dict(path="/x", status=200, request_json=None)

    def fed(limit: int) -> SseUsageTracker:
        tracker = SseUsageTracker("openai", "chat_completions", content_limit=limit)
        for chunk in _chunks(body, seed=9):
            tracker.feed(chunk)
        return tracker

    # Past its content limit it keeps no text (bounded memory), and cannot stand in.
    past = fed(len(body) - 1)
    assert past.streamed_call(content_type="text/event-stream", seen=len(body), **kwargs) is None
    assert past.generated_chars > 0  # (its counts go on)
    # A copy that is not every byte it read; a Content-Type parse_call reads another way.
    assert (
        fed(len(body)).streamed_call(content_type="text/event-stream", seen=len(body) - 1, **kwargs) is None
    )
    assert (
        fed(len(body)).streamed_call(content_type="application/event-stream", seen=len(body), **kwargs)
        is None
    )
    ndjson = SseUsageTracker("ollama", "ollama_chat", content_limit=1 << 20)
    assert ndjson.streamed_call(content_type="text/event-stream", seen=0, **kwargs) is None
    # Keeping no content is the default.
    assert fed(0).streamed_call(content_type="text/event-stream", seen=len(body), **kwargs) is None
