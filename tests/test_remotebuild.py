"""The DLP evidence worker builds a plain exchange's event exactly as the proxy would
(failcore.evidence.remotebuild): the snapshot's wire form loses nothing, the child's event is the
proxy's own, byte for byte, and whatever the child cannot build is built by the proxy as before."""

from __future__ import annotations

import dataclasses
import gzip
import random
import time
from typing import Any

import orjson
import pytest

from failcore.evidence.exchange import (
    EvidenceSettings,
    ExchangeSnapshot,
    MessageSnapshot,
    build_exchange_event,
)
from failcore.evidence.remotebuild import (
    DRIFT_FIELDS,
    LlmRecord,
    RemoteBuild,
    TapRecord,
    build_from_frame,
    remote_eligible,
    snapshot_from_wire,
    snapshot_of_frame,
    snapshot_to_wire,
)
from failcore.evidence.scanworker import BuildFirst, ScanOffload
from failcore.llm.call import LlmCall
from failcore.policy.model import Decision
from failcore.proxy.meter import LlmFlow
from failcore.proxy.session import BodyTap
from failcore.tape.serialised import SerialisedEvent
from tests.security.evidence_helpers import AWS_KEY, GITHUB_TOKEN, SALT, origin_and_scanner

CAP = 4096
REDACT = frozenset({"x-team-secret"})


def _text(rng: random.Random) -> str:
    parts = ["hello", "é", "日本", "\x00", "\\", '"', AWS_KEY, GITHUB_TOKEN, "\u2028", " ", "\n"]
    return "".join(rng.choice(parts) for _ in range(rng.randrange(0, 40)))


def _fields(rng: random.Random, body: bytes | None) -> tuple[tuple[bytes, bytes], ...]:
    fields: list[tuple[bytes, bytes]] = []
    for _ in range(rng.randrange(0, 6)):
        name = rng.choice([b"X-Trace", b"accept", b"x-team-secret", b"User-Agent", b"x-\xff"])
        fields.append((name, bytes(rng.randrange(256) for _ in range(rng.randrange(0, 24)))))
    if rng.random() < 0.5:
        fields.append((b"Authorization", b"Bearer " + GITHUB_TOKEN.encode()))
    if rng.random() < 0.3:
        fields.append((b"Cookie", b"session=" + AWS_KEY.encode() + b"; theme=dark"))
    ctype = rng.choice([b"application/json", b"text/plain; charset=utf-8", b"application/octet-stream", None])
    if ctype is not None:
        fields.append((b"Content-Type", ctype))
    if body is not None:
        fields.append((b"Content-Length", str(len(body)).encode()))
    rng.shuffle(fields)
    return tuple(fields)


def _body(rng: random.Random) -> tuple[bytes | None, bool]:
    """A body and whether it is gzip'd."""
    kind = rng.choice(["none", "empty", "text", "json", "binary", "gzip"])
    if kind == "none":
        return None, False
    if kind == "empty":
        return b"", False
    if kind == "binary":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))), False
    text = _text(rng)
    data = orjson.dumps({"note": text, "key": AWS_KEY}) if kind == "json" else text.encode()
    return (gzip.compress(data, mtime=0), True) if kind == "gzip" else (data, False)


def _tapped(rng: random.Random, body: bytes | None) -> BodyTap | None:
    """The body as a stream tap keeps it: passed in uneven chunks, sometimes past what it keeps."""
    if body is None:
        return None
    tap = BodyTap(CAP if rng.random() < 0.7 else rng.randrange(1, 64))
    rest = body
    while rest:
        n = rng.randrange(1, 200)
        tap(rest[:n])
        rest = rest[n:]
    tap(b"")
    return tap


def _message(rng: random.Random, streamed: bool = False) -> MessageSnapshot:
    body, gzipped = _body(rng)
    fields = _fields(rng, body)
    if gzipped:
        fields = (*fields, (b"Content-Encoding", b"gzip"))
    trailers = ((b"x-checksum", b"abc\xfe"),) if rng.random() < 0.2 else None
    start = rng.uniform(1.7e9, 1.8e9)
    tap = _tapped(rng, body) if streamed and rng.random() < 0.7 else None
    return MessageSnapshot(
        http_version=rng.choice(["HTTP/1.1", "HTTP/2.0", "HTTP/1.0"]),
        headers=fields,
        content=None if tap is not None else body,
        tap=tap,
        ts_start=start,
        ts_end=rng.choice([None, start + rng.random()]),
        trailers=trailers,
    )


def _llm(rng: random.Random) -> LlmFlow:
    """An LLM call's meter as the recorder snapshots it: the evidence failcore.proxy.meter.llm_evidence
    shapes (values of every JSON kind, text that needs escaping, a secret) and its warnings."""

    def value() -> Any:
        return rng.choice([None, 0, 1234567, 2**53 + 1, 0.1 + 0.2, 1e-9, 3.0, True, "gpt-4o é", _text(rng)])

    usage = ["input_tokens", "output_tokens", "total_tokens", "cached_input_tokens", "reasoning_tokens"]
    evidence = {
        "provider": rng.choice(["openai", "anthropic"]),
        "api": rng.choice(["chat_completions", "messages", "responses"]),
        "request_model": value(),
        "response_model": value(),
        "stream": rng.random() < 0.5,
        "usage": {"known": rng.random() < 0.5, **{k: value() for k in usage}},
        "finish_reason": value(),
        "tool_calls": rng.randrange(0, 4),
        "response_format": None,
        "cost": {"usd": rng.choice([None, 0.000123456789, 1.5]), "reason": value(), "priced_as": value()},
    }
    warnings = rng.choice([[], [{"reason": "usage_unknown", "message": "no usage " + _text(rng)}]])
    call = None
    if rng.random() < 0.7:
        # What the contract-drift check reads: every format, statuses, cut outputs, tool inputs.
        call = LlmCall(
            "openai",
            rng.choice(["chat_completions", "messages", "responses"]),
            response_format=rng.choice(
                [None, "", "json_object", "json_schema", "tool_forced", "json_prefill"]
            ),
            status=rng.choice([None, 200, 500]),
            output_truncated=rng.random() < 0.2,
            tool_calls=rng.randrange(0, 3),
            tool_inputs=rng.choice([[], ['{"city": "Paris"}'], ["not json", '{"a": 1}'], [_text(rng)]]),
            output_text=rng.choice([None, '{"a": 1}', '{"a": ', "plain " + _text(rng), '"only a string"']),
        )
    return LlmFlow("openai", "chat_completions", "gpt-4o", call=call, evidence=evidence, warnings=warnings)


def _snapshot(seed: int, streamed: bool = False) -> ExchangeSnapshot:
    """A random exchange; `streamed`: also streamed bodies (stream taps) and LLM calls."""
    rng = random.Random(seed)
    decision = rng.choice(
        [
            None,
            Decision("ALLOW", None, None, False, "ALLOW"),
            Decision("WARN", "r1", "watch é " + AWS_KEY, True, "BLOCK"),
            Decision("BLOCK", "no-upload", "uploads are off", False, "BLOCK"),
        ]
    )
    response = _message(rng, streamed) if rng.random() < 0.8 else None
    start = rng.uniform(1.7e9, 1.8e9)
    return ExchangeSnapshot(
        flow_id=f"flow-{seed}",
        action=rng.choice(["http.request", "http.connect"]),
        host=rng.choice(["api.example.test", "127.0.0.1", "xn--caf-dma.test"]),
        port=rng.choice([80, 443, 8443]),
        scheme=rng.choice(["http", "https"]),
        method=rng.choice(["GET", "POST", "PUT"]),
        path=rng.choice(["/", "/v1/x?token=" + GITHUB_TOKEN, "/caf\\xe9?q=1"]),
        ts_start=start,
        ts_end=start + rng.random(),
        request=_message(rng, streamed),
        response=response,
        status=None if response is None else rng.choice([200, 404, 502]),
        reason=None if response is None else rng.choice(["OK", "Not Found", ""]),
        decision=decision,
        blocked=decision is not None and decision.decision == "BLOCK",
        error=rng.choice([None, "client disconnected", "peer closed connection é"]),
        internal_error=rng.choice([None, "ValueError: boom"]),
        llm=_llm(rng) if streamed and rng.random() < 0.6 else None,
        cut=rng.choice([None, {"reason": "dlp", "at": 12}]),
        warnings=rng.choice([None, [], [{"reason": "dlp", "message": "found " + AWS_KEY}]]),
        replay=rng.choice([None, {"from": "run-1", "flow": "f"}]),
        stream_complete=rng.random() < 0.3,
    )


def _settings(scanner: Any, origin: Any = None) -> EvidenceSettings:
    return EvidenceSettings(
        run_id="run-remote", body_cap=CAP, salt=SALT, redact=REDACT, dlp=scanner, scan_origin=origin
    )


def _on_the_pipe(item: object) -> Any:
    return orjson.loads(orjson.dumps(item))


@pytest.fixture(scope="module")
def origin_scanner() -> tuple[Any, Any]:
    return origin_and_scanner()


@pytest.mark.parametrize("seed", range(300))
def test_a_snapshot_comes_back_from_the_wire_as_it_was(seed: int) -> None:
    snap = _snapshot(seed)
    assert snapshot_from_wire(_on_the_pipe(snapshot_to_wire(snap))) == snap


@pytest.mark.parametrize("seed", range(300))
def test_the_child_builds_the_proxys_event(seed: int, origin_scanner: tuple[Any, Any]) -> None:
    origin, scanner = origin_scanner
    local = build_exchange_event(_snapshot(seed), _settings(scanner))
    assert isinstance(local, dict)
    item = RemoteBuild(_snapshot(seed), _settings(scanner, origin), BuildFirst(dict)).frame_item()
    remote = build_from_frame(_on_the_pipe(item), scanner)
    assert orjson.dumps(remote) == orjson.dumps(local)


@pytest.mark.parametrize("seed", range(300))
def test_the_frame_serialised_on_the_event_loop_builds_the_proxys_event(
    seed: int, origin_scanner: tuple[Any, Any]
) -> None:
    """The recorder serialises a RemoteBuild's frame at once (failcore.proxy.recorder), not in the
    writer's thread a batch later: the child must build the same event from those bytes."""
    origin, scanner = origin_scanner
    local = build_exchange_event(_snapshot(seed), _settings(scanner))
    remote_build = RemoteBuild(_snapshot(seed), _settings(scanner, origin), BuildFirst(dict))
    remote_build.serialise_now()
    assert remote_build.frame is not None
    remote = build_from_frame(orjson.loads(remote_build.frame_bytes()), scanner)
    assert orjson.dumps(remote) == orjson.dumps(local)


@pytest.mark.parametrize("seed", range(300))
def test_a_snapshot_let_go_is_built_in_the_proxy_from_its_frame(
    seed: int, origin_scanner: tuple[Any, Any]
) -> None:
    """Once its frame is made, the recorder lets a RemoteBuild's snapshot go (RemoteBuild.let_go); when
    the worker cannot build it, the proxy builds it from the frame: the same event as from the snapshot."""
    origin, scanner = origin_scanner
    local = build_exchange_event(_snapshot(seed), _settings(scanner))
    remote_build = RemoteBuild(_snapshot(seed), _settings(scanner, origin))
    assert remote_build.serialise_now()
    frame = remote_build.frame
    assert frame is not None
    remote_build.let_go(
        BuildFirst(lambda: build_exchange_event(snapshot_of_frame(frame), _settings(scanner)))
    )
    assert remote_build.snap is None and remote_build.frame_bytes() == frame
    assert snapshot_of_frame(frame) == _snapshot(seed)
    assert orjson.dumps(remote_build()) == orjson.dumps(local)


def test_a_frame_orjson_refuses_is_left_to_the_writer(origin_scanner: tuple[Any, Any]) -> None:
    origin, scanner = origin_scanner
    snap = dataclasses.replace(_snapshot(3), warnings=[{"code": object()}])  # type: ignore[list-item]
    remote_build = RemoteBuild(snap, _settings(scanner, origin), BuildFirst(dict))
    remote_build.serialise_now()
    assert remote_build.frame is None
    with pytest.raises(TypeError):  # (the worker's scan() then answers None: the writer builds it)
        remote_build.frame_bytes()


def _same_message(back: MessageSnapshot, sent: MessageSnapshot) -> None:
    assert (back.http_version, back.headers, back.content, back.ts_start, back.ts_end, back.trailers) == (
        sent.http_version,
        sent.headers,
        sent.content,
        sent.ts_start,
        sent.ts_end,
        sent.trailers,
    )
    if sent.tap is None:
        assert back.tap is None
        return
    assert isinstance(back.tap, TapRecord)
    assert (back.tap.kept, back.tap.size, back.tap.digest.hexdigest(), back.tap.stream_evidence()) == (
        bytes(sent.tap.kept),
        sent.tap.size,
        sent.tap.digest.hexdigest(),
        sent.tap.stream_evidence(),
    )


@pytest.mark.parametrize("seed", range(300))
def test_a_streamed_or_llm_snapshot_comes_back_from_the_wire_as_it_was(seed: int) -> None:
    snap = _snapshot(seed, streamed=True)
    back = snapshot_from_wire(_on_the_pipe(snapshot_to_wire(snap)))
    _same_message(back.request, snap.request)
    if snap.response is None:
        assert back.response is None
    else:
        assert back.response is not None
        _same_message(back.response, snap.response)
    if snap.llm is None:
        assert back.llm is None
    else:
        assert isinstance(back.llm, LlmRecord)
        assert (back.llm.evidence, back.llm.warnings) == (snap.llm.evidence, snap.llm.warnings)
        call = snap.llm.call
        if call is None or call.response_format is None:
            assert back.llm.call is None
        else:
            assert back.llm.call is not None
            assert [getattr(back.llm.call, f) for f in DRIFT_FIELDS] == [
                getattr(call, f) for f in DRIFT_FIELDS
            ]
    plain = {"request", "response", "llm"}
    fields = [f for f in ExchangeSnapshot.__dataclass_fields__ if f not in plain]
    assert [getattr(back, f) for f in fields] == [getattr(snap, f) for f in fields]


@pytest.mark.parametrize("seed", range(300))
def test_the_child_builds_the_proxys_event_of_a_streamed_or_llm_exchange(
    seed: int, origin_scanner: tuple[Any, Any]
) -> None:
    origin, scanner = origin_scanner
    snap = _snapshot(seed, streamed=True)
    # (one snapshot both ways: a tap's chunk times are its own; the frame is taken first, as the
    # writer takes it before any local build)
    item = _on_the_pipe(RemoteBuild(snap, _settings(scanner, origin), BuildFirst(dict)).frame_item())
    local = build_exchange_event(snap, _settings(scanner))
    assert isinstance(local, dict)
    remote = build_from_frame(item, scanner)
    assert orjson.dumps(remote) == orjson.dumps(local)


@pytest.mark.parametrize("coding", [None, "gzip"])
def test_secrets_are_masked_in_what_the_child_builds(
    coding: str | None, origin_scanner: tuple[Any, Any]
) -> None:
    origin, scanner = origin_scanner
    snap = _snapshot(3)
    body = orjson.dumps({"aws": AWS_KEY, "note": f"token {GITHUB_TOKEN} here"})
    fields = [(b"Content-Type", b"application/json"), (b"Authorization", b"Bearer " + GITHUB_TOKEN.encode())]
    if coding:
        body = gzip.compress(body, mtime=0)
        fields.append((b"Content-Encoding", coding.encode()))
    snap.request = MessageSnapshot("HTTP/1.1", tuple(fields), body, None, 1.75e9, 1.75e9 + 0.5)
    snap.path = "/upload?key=" + AWS_KEY
    item = RemoteBuild(snap, _settings(scanner, origin), BuildFirst(dict)).frame_item()
    event = build_from_frame(_on_the_pipe(item), scanner)
    line = orjson.dumps(event)
    assert AWS_KEY.encode() not in line and GITHUB_TOKEN.encode() not in line
    assert event["request"]["body"]["dlp_masked"]
    # (the token is masked as the echo of the request's own credential)
    assert "aws-access-key-id" in {hit["rule"] for hit in event["dlp"]["hits"]}


def test_what_goes_to_the_child_and_what_the_proxy_builds(origin_scanner: tuple[Any, Any]) -> None:
    origin, scanner = origin_scanner
    snap = _snapshot(1)
    assert remote_eligible(snap, _settings(scanner, origin), CAP)
    # A body that would be recorded truncated needs a past-cap scan of its own: built by the proxy.
    assert not remote_eligible(snap, _settings(scanner, origin), CAP + 1)
    # No worker (FAILCORE_EVIDENCE_WORKER=0, a policy with no file) or no DLP: built by the proxy.
    assert not remote_eligible(snap, _settings(scanner), 0)
    assert not remote_eligible(snap, _settings(None, origin), 0)
    # An LLM call goes with its meter's evidence (and what its contract-drift check reads).
    snap.llm = LlmFlow("openai", "chat_completions", "gpt-4o", call=LlmCall("openai", "chat"), evidence={})
    assert remote_eligible(snap, _settings(scanner, origin), 0)
    snap.llm.call = LlmCall("openai", "chat", response_format="json_schema")  # type: ignore[union-attr]
    assert remote_eligible(snap, _settings(scanner, origin), 0)


def test_the_worker_builds_it_and_the_proxy_builds_what_the_worker_cannot(
    origin_scanner: tuple[Any, Any],
) -> None:
    origin, scanner = origin_scanner
    calls: list[int] = []

    def local_build() -> dict[str, Any]:
        calls.append(1)
        built = build_exchange_event(_snapshot(7), _settings(scanner))
        assert isinstance(built, dict)
        return built

    expected = local_build()
    calls.clear()
    offload = ScanOffload("run-remote")
    try:
        deadline = time.monotonic() + 120
        while True:
            out = offload([RemoteBuild(_snapshot(7), _settings(scanner, origin), BuildFirst(local_build))])
            if not isinstance(out[0], RemoteBuild):
                break
            assert time.monotonic() < deadline, "the evidence worker never became ready"
            time.sleep(0.1)
        # It comes back as the tape line's body, byte for byte what the writer makes of the proxy's event.
        assert isinstance(out[0], SerialisedEvent) and out[0].body == orjson.dumps(expected)
        assert calls == [] and offload.offloaded == 1

        # An item the child cannot build comes back None: it stays a builder, which builds it here.
        class Unbuildable(RemoteBuild):
            def frame_item(self) -> list[Any]:
                return ["build", ["not", "a", "snapshot"], ["run-remote", CAP, SALT.hex(), []]]

        broken = Unbuildable(_snapshot(7), _settings(scanner, origin), BuildFirst(local_build))
        out = offload([broken])
        assert out == [broken] and offload.worker is not None and offload.deaths == 0
        assert orjson.dumps(out[0]()) == orjson.dumps(expected) and calls == [1]
    finally:
        offload.close()


def test_the_worker_builds_without_loading_mitmproxy() -> None:
    """The child imports no mitmproxy (start-up time and memory); the text it no longer imports is
    still classified as mitmproxy's kill."""
    import subprocess
    import sys

    from mitmproxy.flow import Error

    from failcore.evidence.exchange import classify_error

    assert classify_error(Error.KILLED_MESSAGE) == "killed"
    probe = (
        "import sys, failcore.evidence.scanchild; print(sorted(m for m in sys.modules if 'mitmproxy' in m))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_body_the_recorder_could_not_size_is_not_sent_to_be_built(origin_scanner: tuple[Any, Any]) -> None:
    """The recorder's probe stops a little past LOOP_BUILD_MAX_BYTES: a compressed body that decodes to
    more is built in the writer's thread as before (its size unknown, it may need a past-cap scan),
    never by the worker, however large the recorded cap."""
    from types import SimpleNamespace

    from failcore.proxy.recorder import LOOP_BUILD_MAX_BYTES, Recorder

    origin, scanner = origin_scanner
    cfg = EvidenceSettings(
        run_id="run-remote", body_cap=16 << 20, salt=SALT, redact=REDACT, dlp=scanner, scan_origin=origin
    )
    recorder = SimpleNamespace(writer=object(), _safe=lambda builder: builder)
    for size, remote in ((1024, True), (LOOP_BUILD_MAX_BYTES * 4, False)):
        snap = _snapshot(5)
        plain = b"x" * size
        snap.request = MessageSnapshot(
            "HTTP/1.1", ((b"Content-Encoding", b"gzip"),), gzip.compress(plain), None, 1.75e9, 1.75e9
        )
        snap.response = None
        built = Recorder._build_or_hand_over(recorder, snap, cfg)  # type: ignore[arg-type]
        assert isinstance(built, RemoteBuild) is remote
        assert remote or isinstance(built, BuildFirst)


def test_a_streamed_body_goes_to_the_child_unless_it_has_a_past_cap_scan(
    origin_scanner: tuple[Any, Any],
) -> None:
    """A body a stream tap kept goes with its tap's record; one whose DLP scan went past the recorded
    cap (its hits placed by the proxy's past-cap scan) never goes: built by the proxy as before."""
    from failcore.evidence.pastcap import PastCapScan

    origin, scanner = origin_scanner
    for past_cap in (False, True):
        snap = _snapshot(11)
        tap = BodyTap(CAP)
        if past_cap:
            # (a compressed stream's scan only counts what passes: no scan process in this test)
            tap.observers.append(PastCapScan(scanner.engine, CAP, "response.body", compressed=True))
        for _ in range(3):
            tap(b"x" * CAP)
        snap.response = MessageSnapshot(
            "HTTP/1.1", ((b"Content-Type", b"text/event-stream"),), None, tap, 1.0, 2.0
        )
        snap.request = MessageSnapshot("HTTP/1.1", (), b"{}", None, 1.0, 1.0)
        assert remote_eligible(snap, _settings(scanner, origin), CAP) is not past_cap
