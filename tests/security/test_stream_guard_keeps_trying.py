"""Attack: make a stream check raise once, then send what it would have caught.

Under `fail_open: true` a part of a body's stream callable that raised (the strict stream DLP, the
budget and meter cuts, the tap's observers) used to be left out for the rest of the stream. An upstream
able to make it raise on one chunk (a hostile byte sequence, a decoder corner case) then had every
later chunk forwarded unscanned: a secret sent after it reached the client. Now fail-open means the
bytes keep flowing and the failure is recorded, and the part is still asked about every later chunk;
a part that keeps raising is recorded once (one `internal_error` event) with how often it raised in
the exchange's error, never one event per chunk."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from failcore.evidence.pastcap import PastCapScan
from failcore.proxy.streamdlp import StreamDlp
from tests.helpers import github_token, network_events, read_tape
from tests.security.helpers import stream_through, tape_bytes
from tests.security.upstream import LoggingUpstream

POLICY = (
    "version: 1\nmode: enforce\nfail_open: true\n"
    "dlp:\n  stream: strict\n  rule_actions: {github-pat: BLOCK}\n"
)
# Far more than one read (mitmproxy reads at most 65535 bytes at a time): the stream reaches the proxy
# in several chunks, and the secret at its end never in the first one.
FILLER = b'data: {"text": "' + b"x" * 300_000 + b'"}\n\n'


def raising(original: Callable[..., object], calls: list[int], times: int | None) -> Callable[..., object]:
    """`original`, but raising on its first `times` calls (None: on every call); `calls` counts them."""

    def call(self: object, chunk: bytes) -> object:
        calls.append(len(chunk))
        if times is None or len(calls) <= times:
            raise RuntimeError("injected stream failure")
        return original(self, chunk)

    return call


def test_a_strict_stream_dlp_that_raised_once_still_cuts_a_later_secret(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(StreamDlp, "__call__", raising(StreamDlp.__call__, calls, 1))
    secret = github_token().encode()
    body = FILLER + b'data: {"text": "token ' + secret + b' done"}\n\n'
    logging_upstream.respond_with = (200, [(b"content-type", b"text/event-stream")], body)
    proxy = start_proxy(policy_file(POLICY), upstream_ca=logging_upstream.ca_path)
    got, failure = stream_through(proxy, f"{logging_upstream.url}/events")
    proxy.flush()
    assert b"GET /events" in logging_upstream.received_bytes()
    assert len(calls) > 1, "the stream reached the proxy in one chunk: the test proves nothing"
    assert secret not in got and failure is not None, "the secret after the failure reached the client"
    assert got.startswith(b'data: {"text": "xxx'), "fail-open: what came before the secret still went out"
    events = read_tape(tmp_path / "tape")
    errors = [e for e in events if e["kind"] == "internal_error"]
    assert [e["detail"]["where"] for e in errors] == ["response stream: StreamDlp"], errors
    (event,) = network_events(events)
    assert event["cut"]["reason"] == "dlp" and "github-pat" in event["cut"]["detail"]
    assert secret not in tape_bytes(tmp_path / "tape")


def test_a_check_that_raises_on_every_chunk_is_recorded_once_and_counted(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(StreamDlp, "__call__", raising(StreamDlp.__call__, calls, None))
    logging_upstream.respond_with = (200, [(b"content-type", b"text/event-stream")], FILLER)
    proxy = start_proxy(policy_file(POLICY), upstream_ca=logging_upstream.ca_path)
    got, failure = stream_through(proxy, f"{logging_upstream.url}/events")
    proxy.flush()
    assert (got, failure) == (FILLER, None), "fail-open: the stream goes through whole"
    assert len(calls) > 1, "the stream reached the proxy in one chunk: the test proves nothing"
    events = read_tape(tmp_path / "tape")
    errors = [e for e in events if e["kind"] == "internal_error"]
    assert len(errors) == 1 and "injected stream failure" in errors[0]["error"], errors
    (event,) = network_events(events)
    assert event["outcome"] == "ok" and event.get("cut") is None
    counted = f"StreamDlp: RuntimeError: injected stream failure (raised on {len(calls)} chunks"
    assert counted in event["error"], event["error"]


def test_an_observer_that_raised_once_still_sees_the_rest_of_the_stream(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DLP evidence scan past the recorded cap (a BodyTap observer) raises on the first chunk; a
    secret far past the cap must still be found, and masked, on the tape."""
    calls: list[int] = []
    monkeypatch.setattr(PastCapScan, "__call__", raising(PastCapScan.__call__, calls, 1))
    secret = github_token().encode()
    body = FILLER + b'data: {"text": "token ' + secret + b' done"}\n\n'
    logging_upstream.respond_with = (200, [(b"content-type", b"text/event-stream")], body)
    proxy = start_proxy(policy_file("version: 1\nmode: observe\n"), upstream_ca=logging_upstream.ca_path)
    got, failure = stream_through(proxy, f"{logging_upstream.url}/events")
    proxy.flush()
    assert (got, failure) == (body, None)
    assert len(calls) > 1, "the stream reached the proxy in one chunk: the test proves nothing"
    events = read_tape(tmp_path / "tape")
    errors = [e for e in events if e["kind"] == "internal_error"]
    assert [e["detail"]["where"] for e in errors] == ["response stream: PastCapScan"], errors
    (event,) = network_events(events)
    rules = [hit["rule"] for hit in event["dlp"]["hits"]]
    assert "github-pat" in rules, event["dlp"]
    assert secret not in tape_bytes(tmp_path / "tape")
