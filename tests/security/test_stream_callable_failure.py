"""Attack surface: a failure inside a response stream's callable (strict stream DLP, the budget and
meter cuts, the stream tap's observers) while the body streams through.

mitmproxy calls the stream callable itself, outside failcore's hooks: a raise there used to crash the
connection's handler, unrecorded, whatever `fail_open` said. Now it is recorded (an `internal_error`
event and the exchange's own) and handled like a failing hook: fail-open lets the stream through
(the failing part is left out for the rest of it); `fail_open: false` cuts the stream before the chunk
the failing check was looking at reaches the client."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import httpx
import pytest

from failcore.evidence.pastcap import PastCapScan
from failcore.proxy.streamdlp import StreamDlp
from tests.helpers import network_events, proxied_client, read_tape
from tests.security.upstream import LoggingUpstream

BODY = b'data: {"text": "stream-marker"}\n\n'


def policy(fail_open: bool) -> str:
    return (
        f"version: 1\nmode: enforce\nfail_open: {str(fail_open).lower()}\n"
        "dlp:\n  stream: strict\n  severity_actions: {critical: BLOCK, high: BLOCK}\n"
    )


def broken(self: object, chunk: bytes) -> None:
    raise RuntimeError("injected stream failure")


def fetch(proxy, url: str) -> tuple[int | None, bytes, str | None]:  # type: ignore[no-untyped-def]
    """Status, the body bytes the client got, and how reading it failed (None: it ended cleanly)."""
    got = b""
    status = None
    with proxied_client(proxy) as client:
        try:
            with client.stream("GET", url) as response:
                status = response.status_code
                for piece in response.iter_raw():
                    got += piece
        except httpx.HTTPError as e:
            return status, got, type(e).__name__
    return status, got, None


# A cut guard (the strict stream DLP) and an observer (the DLP evidence scan past the body cap).
PARTS = [(StreamDlp, "StreamDlp"), (PastCapScan, "PastCapScan")]


@pytest.mark.parametrize(("part", "name"), PARTS)
@pytest.mark.parametrize("fail_open", [True, False])
def test_a_failing_stream_check_is_recorded_and_follows_fail_open(
    start_proxy,
    policy_file,
    logging_upstream: LoggingUpstream,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
    part: type,
    name: str,
    fail_open: bool,
) -> None:
    monkeypatch.setattr(part, "__call__", broken)
    logging_upstream.respond_with = (200, [(b"content-type", b"text/event-stream")], BODY)
    proxy = start_proxy(policy_file(policy(fail_open)), upstream_ca=logging_upstream.ca_path)
    status, got, failure = fetch(proxy, f"{logging_upstream.url}/stream")
    proxy.flush()
    assert b"GET /stream" in logging_upstream.received_bytes()
    events = read_tape(tmp_path / "tape")
    errors = [e for e in events if e["kind"] == "internal_error"]
    assert len(errors) == 1, errors
    assert name in errors[0]["detail"]["where"] and "injected stream failure" in errors[0]["error"]
    (event,) = network_events(events)
    if fail_open:
        assert (status, got, failure) == (200, BODY, None)
        assert event["outcome"] == "ok" and event.get("cut") is None
        assert f"{name}: RuntimeError: injected stream failure" in event["error"]
    else:
        assert status == 200 and b"stream-marker" not in got and failure is not None
        assert event["outcome"] == "BLOCKED"
        assert event["cut"]["reason"] == "internal_error" and event["cut"]["at_bytes"] == 0


def test_a_failing_request_stream_observer_is_recorded_and_the_upload_goes_on(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunked upload streams through (observe mode holds nothing); the DLP evidence scan watching
    it fails: recorded, and the upload still reaches the upstream whole (fail-open)."""
    monkeypatch.setattr(PastCapScan, "__call__", broken)
    proxy = start_proxy(policy_file("version: 1\nmode: observe\n"), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        response = client.post(f"{logging_upstream.url}/upload", content=iter([b"upload-", b"marker"]))
    proxy.flush()
    assert response.status_code == 200
    assert b"upload-" in logging_upstream.received_bytes() and b"marker" in logging_upstream.received_bytes()
    events = read_tape(tmp_path / "tape")
    errors = [e for e in events if e["kind"] == "internal_error"]
    assert [e["detail"]["where"] for e in errors] == ["request stream: PastCapScan"], errors
    (event,) = network_events(events)
    assert event["request"]["stream"]["chunk_count"] >= 1 and event["bytes_out"] == len(b"upload-marker")


def test_a_request_stream_failing_under_fail_open_false_never_ends_upstream_as_a_whole_request(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunked upload streams (observe mode); a reload to `fail_open: false` lands just before its
    DLP evidence observer fails. The failing chunk is dropped, and the upstream must not get the
    message's end either: mitmproxy sent the chunked `0` after the dropped body, a complete request
    with a truncated body."""
    from failcore.proxy.session import Session

    reloaded = [False]
    monkeypatch.setattr(Session, "fail_open", property(lambda self: not reloaded[0]))

    def reload_then_fail(self: object, chunk: bytes) -> None:
        reloaded[0] = True
        raise RuntimeError("injected stream failure")

    monkeypatch.setattr(PastCapScan, "__call__", reload_then_fail)
    proxy = start_proxy(policy_file("version: 1\nmode: observe\n"), upstream_ca=logging_upstream.ca_path)
    statuses: list[int] = []

    # (Refused with a 502, or by a reset: the client is told either way.)
    def upload() -> Iterator[bytes]:
        # The body starts once the head has reached the upstream (it streams: the head does not wait for
        # the body), so the failing chunk meets a request that has left. A full-suite run once had the
        # chunk fail before mitmproxy had sent the head upstream, and nothing to check.
        deadline = time.monotonic() + 30
        while b"POST /upload" not in logging_upstream.received_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        yield b"upload-"
        yield b"marker"

    with proxied_client(proxy) as client, contextlib.suppress(httpx.HTTPError):
        statuses.append(client.post(f"{logging_upstream.url}/upload", content=upload()).status_code)
    assert 200 not in statuses
    proxy.flush()
    got = logging_upstream.received_bytes()
    assert b"POST /upload" in got, "the request's head left before the body (it streams)"
    assert b"upload-" not in got and b"marker" not in got
    assert b"\r\n0\r\n\r\n" not in got, f"the upstream got a complete (truncated) request: {got[-80:]!r}"
    errors = [e for e in read_tape(tmp_path / "tape") if e["kind"] == "internal_error"]
    assert [e["detail"]["where"] for e in errors] == ["request stream: PastCapScan"], errors
