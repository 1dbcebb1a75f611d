"""Cutting a live SSE response mid-way (failcore.proxy.cutoff) in a real mitmproxy with failcore's
addons, against the real StandIn upstream: the client must see an abort, never a clean truncated end."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from mitmproxy import http

from failcore.proxy.cutoff import CuttingTap, CutVerdict, cut_client_stream
from failcore.proxy.session import FlowState
from tests.helpers import ProxyThread, network_events, proxied_client, read_tape
from tests.security.helpers import read_head

SSE_EVENTS = 10
SSE_GAP = 0.2
FIRST_THREE = b"data: event 1\n\ndata: event 2\n\ndata: event 3\n\n"
# What the upstream sends after the event that triggers the cut (the 4th). A proxy that lets the
# upstream run to its end (the abort coming only with mitmproxy's `response` hook) reads all of it.
AFTER_THE_CUT = b"".join(b"data: event %d\n\n" % i for i in range(5, SSE_EVENTS + 1))
# How long the cut takes (to the client's abort, to the upstream's close): benchmarks/bench_bounds.py.


class CutAfterEvents:
    """Passes `limit` SSE events (blank-line terminated), then cuts: the rest of the triggering chunk
    is dropped, so an event never arrives half."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0

    def __call__(self, chunk: bytes) -> CutVerdict | None:
        offset = 0
        while (end := chunk.find(b"\n\n", offset)) != -1:
            if self.seen == self.limit:
                return CutVerdict("budget", detail=f"{self.limit} events allowed", keep=offset)
            self.seen += 1
            offset = end + 2
        if self.seen == self.limit and offset < len(chunk):
            return CutVerdict("budget", detail=f"{self.limit} events allowed", keep=offset)
        return None


class CutterAddon:
    """Test addon, loaded after failcore's: wraps failcore's BodyTap in a CuttingTap for requests
    carrying `x-test-cut: <events>`, and remembers what mitmproxy reports about those flows."""

    def __init__(self, proxy: ProxyThread) -> None:
        assert proxy.proxy is not None
        self.session = proxy.proxy.session
        self.flows: list[http.HTTPFlow] = []
        self.states: dict[str, FlowState] = {}
        self.errors: dict[str, str] = {}
        self.taps: dict[str, CuttingTap] = {}

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        limit = flow.request.headers.get("x-test-cut")
        if limit is None or flow.response is None or not flow.response.stream:
            return
        state = self.session.state(flow)
        self.flows.append(flow)
        self.states[flow.id] = state
        inner = flow.response.stream if callable(flow.response.stream) else None
        tap = CuttingTap(flow, CutAfterEvents(int(limit)), inner=inner, state=state)
        self.taps[flow.id] = tap
        flow.response.stream = tap

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.error is not None:
            self.errors[flow.id] = flow.error.msg


def install(proxy: ProxyThread) -> CutterAddon:
    addon = CutterAddon(proxy)
    proxy.call(lambda: proxy.proxy.master.addons.add(addon))  # type: ignore[union-attr]
    return addon


def wait_for(predicate: Any, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def assert_flow_cut(
    proxy: ProxyThread, addon: CutterAddon, at_bytes: int, after_the_cut: bytes | None = AFTER_THE_CUT
) -> http.HTTPFlow:
    assert len(addon.flows) == 1
    flow = addon.flows[0]
    assert addon.states[flow.id].cut == {
        "reason": "budget",
        "at_bytes": at_bytes,
        "detail": "3 events allowed",
    }
    # mitmproxy reports the flow as failed (the Recorder sees flow.error) ...
    assert wait_for(lambda: proxy.call(lambda: flow.error is not None))
    # ... and the upstream connection was closed right after the cut, not when the server finished:
    # what the upstream sent later was never read (only the rest of the triggering chunk was dropped).
    assert wait_for(lambda: proxy.call(lambda: flow.server_conn.timestamp_end is not None))
    if after_the_cut is not None:
        assert proxy.call(lambda: addon.taps[flow.id].dropped) < len(after_the_cut)
    return flow


def assert_proxy_healthy(proxy: ProxyThread, upstream: Any) -> None:
    with proxied_client(proxy) as client:
        assert client.get(upstream.url + "/sse?n=3").content == FIRST_THREE


def read_until_error(response: httpx.Response) -> tuple[bytes, BaseException | None]:
    received = b""
    try:
        for piece in response.iter_raw():
            received += piece
    except httpx.HTTPError as e:
        return received, e
    return received, None


def test_http1_client_sees_abort_after_three_events(start_proxy, upstream, tmp_path):
    proxy = start_proxy()
    addon = install(proxy)
    with (
        proxied_client(proxy) as client,
        client.stream(
            "GET", upstream.url + f"/sse?n={SSE_EVENTS}&gap={SSE_GAP}", headers={"x-test-cut": "3"}
        ) as response,
    ):
        assert response.status_code == 200 and response.http_version == "HTTP/1.1"
        received, error = read_until_error(response)
    assert received == FIRST_THREE
    assert isinstance(error, httpx.RemoteProtocolError), error  # "incomplete chunked read"
    flow = assert_flow_cut(proxy, addon, len(FIRST_THREE))
    assert addon.errors[flow.id]  # the error hook fired
    assert_proxy_healthy(proxy, upstream)
    proxy.flush()
    [recorded] = [e for e in network_events(read_tape(tmp_path / "tape")) if e["flow"] == flow.id]
    # The tape names the cause (the cut), not mitmproxy's view of the fallout ("client disconnected").
    assert recorded["outcome"] == "BLOCKED" and recorded["fail_reason"] is None
    assert recorded["cut"] == {"reason": "budget", "at_bytes": len(FIRST_THREE), "detail": "3 events allowed"}
    assert recorded["response"]["body"]["text"].encode() == FIRST_THREE


def test_openai_sdk_stream_raises_mid_way(start_proxy, upstream):
    proxy = start_proxy()
    addon = install(proxy)
    words = "one two three four five six seven eight nine ten"
    contents: list[str] = []
    with proxied_client(proxy) as http_client:
        client = openai.OpenAI(
            base_url=upstream.url + "/v1", api_key="sk-test", http_client=http_client, max_retries=0
        )
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": words}],
            stream=True,
            extra_headers={"x-standin-gap": str(SSE_GAP), "x-test-cut": "3"},
        )
        with pytest.raises((httpx.HTTPError, openai.APIError)):
            for chunk in stream:
                contents.append(chunk.choices[0].delta.content or "")
    assert len(contents) == 3  # role delta, then "Echo:", "one"
    assert "".join(contents).split() == ["Echo:", "one"]
    at_bytes = addon.states[addon.flows[0].id].response_tap.size  # type: ignore[union-attr]
    assert_flow_cut(proxy, addon, at_bytes, after_the_cut=None)
    assert_proxy_healthy(proxy, upstream)


class PreferH2Context(ssl.SSLContext):
    """httpcore offers ["http/1.1", "h2"] inside a proxy tunnel and mitmproxy takes the client's first
    choice, so without this the tunnel would always speak HTTP/1.1."""

    def set_alpn_protocols(self, alpn_protocols: Any) -> None:
        super().set_alpn_protocols(sorted(alpn_protocols, key=lambda proto: proto != "h2"))


def test_http2_client_sees_stream_reset_and_connection_survives(start_proxy, upstream):
    # The StandIn speaks HTTP/1.1 only; connecting upstream lazily lets mitmproxy offer the client h2
    # (eagerly it would mirror the upstream's ALPN) - the common agent -> proxy -> HTTP/1 API setup.
    proxy = start_proxy(sets=["connection_strategy=lazy"])
    addon = install(proxy)
    trust = PreferH2Context(ssl.PROTOCOL_TLS_CLIENT)
    trust.load_verify_locations(cafile=str(proxy.ca_cert))
    with httpx.Client(proxy=proxy.url, verify=trust, http2=True, timeout=30) as client:
        with client.stream(
            "GET", upstream.url + f"/sse?n={SSE_EVENTS}&gap={SSE_GAP}", headers={"x-test-cut": "3"}
        ) as response:
            assert response.http_version == "HTTP/2"
            received, error = read_until_error(response)
        assert received == FIRST_THREE
        assert isinstance(error, httpx.RemoteProtocolError), error
        assert "StreamReset" in str(error) or "reset" in str(error).lower(), error
        # Only that stream was reset: the same HTTP/2 connection still carries requests.
        again = client.get(upstream.url + "/sse?n=3")
        assert again.http_version == "HTTP/2" and again.content == FIRST_THREE
    assert_flow_cut(proxy, addon, len(FIRST_THREE))
    assert_proxy_healthy(proxy, upstream)


@pytest.fixture
def close_delimited_upstream() -> Iterator[str]:
    """Plain-HTTP upstream whose SSE body has no length and no chunking: it ends when the connection
    does, so for the client a FIN would be a clean end and only a reset can signal the cut."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                read_head(conn)
                try:
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                    )
                    for i in range(1, SSE_EVENTS + 1):
                        conn.sendall(b"data: event %d\n\n" % i)
                        time.sleep(SSE_GAP)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    server.close()
    thread.join(5)


def test_close_delimited_body_is_reset_not_ended(start_proxy, upstream, close_delimited_upstream):
    proxy = start_proxy()
    addon = install(proxy)
    with (
        proxied_client(proxy) as client,
        client.stream("GET", close_delimited_upstream + "/sse", headers={"x-test-cut": "3"}) as response,
    ):
        assert response.status_code == 200
        received, error = read_until_error(response)
    assert received == FIRST_THREE
    assert isinstance(error, httpx.ReadError), error  # connection reset by peer
    assert_flow_cut(proxy, addon, len(FIRST_THREE))
    assert_proxy_healthy(proxy, upstream)


def test_cut_is_idempotent_and_refuses_finished_flows(start_proxy, upstream):
    proxy = start_proxy()
    addon = install(proxy)
    with proxied_client(proxy) as client:
        assert client.get(upstream.url + "/sse?n=2", headers={"x-test-cut": "5"}).status_code == 200
    flow = addon.flows[0]
    assert wait_for(lambda: proxy.call(lambda: not flow.live))
    state = addon.states[flow.id]
    assert proxy.call(lambda: cut_client_stream(flow, "dlp", state=state)) is False
    assert state.cut is None and flow.error is None

    addon.flows.clear()
    with (
        proxied_client(proxy) as client,
        client.stream(
            "GET", upstream.url + f"/sse?n={SSE_EVENTS}&gap={SSE_GAP}", headers={"x-test-cut": "3"}
        ) as response,
    ):
        received, error = read_until_error(response)
        live = addon.flows[0]
        # A second cut (say DLP after the budget) changes nothing: the first reason stays on record.
        assert proxy.call(lambda: cut_client_stream(live, "dlp", state=addon.states[live.id])) is True
    assert received == FIRST_THREE and error is not None
    assert addon.states[live.id].cut["reason"] == "budget"  # type: ignore[index]


def test_cutting_tap_without_a_verdict_passes_everything_through():
    flow = http.HTTPFlow.__new__(http.HTTPFlow)  # never cut, so the flow is not touched
    seen: list[bytes] = []

    def inner(chunk: bytes) -> bytes:
        seen.append(chunk)
        return chunk

    tap = CuttingTap(flow, lambda chunk: None, inner=inner)
    assert [tap(b"a"), tap(b"bc"), tap(b"")] == [b"a", b"bc", ()]
    assert seen == [b"a", b"bc", b""] and tap.forwarded == 3 and tap.verdict is None
