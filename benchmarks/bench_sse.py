"""SSE pass-through: does the first event reach the client when the upstream sends it, and do the gaps
between events survive the proxy?

The upstream is a tiny in-process server that timestamps each event right before sending it, and the
client timestamps each event when its bytes arrive, so both ends use the same clock.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from benchmarks.harness import stats
from benchmarks.report import Section, Target
from benchmarks.servers import BenchContext, Upstream, running_proxy
from benchmarks.variants import SSE, Variant, for_section

EVENTS = 3
GAP = 0.5
FIRST_EVENT_TARGET_MS = 10.0
GAP_TARGET_MS = 50.0
STREAMING_REFERENCE = "bare-stream"


class _SseServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SseHandler)
        self.sent: dict[str, list[float]] = {}


class _SseHandler(socketserver.StreamRequestHandler):
    server: _SseServer

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        target = head.split(b" ", 2)[1].decode("ascii")
        query = parse_qs(urlsplit(target).query)
        count, gap, key = int(query["n"][0]), float(query["gap"][0]), query["id"][0]
        self.request.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        stamps = self.server.sent.setdefault(key, [])
        for index in range(1, count + 1):
            if index > 1:
                time.sleep(gap)
            frame = f"data: event {index}\n\n".encode()
            stamps.append(time.perf_counter())
            self.request.sendall(f"{len(frame):x}\r\n".encode() + frame + b"\r\n")
        self.request.sendall(b"0\r\n\r\n")


@contextmanager
def sse_server() -> Iterator[_SseServer]:
    server = _SseServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True, slots=True)
class SseSample:
    first_delay_ms: float  # client's first event − upstream's first send
    gap_errors_ms: tuple[float, ...]  # |gap at the client − gap at the upstream| per consecutive pair

    @property
    def worst_gap_error_ms(self) -> float:
        return max(self.gap_errors_ms, default=0.0)


def fetch_events(server: _SseServer, proxy_port: int | None, key: str, events: int = EVENTS) -> SseSample:
    server_port = server.server_address[1]
    path = f"/sse?n={events}&gap={GAP}&id={key}"
    target = f"http://127.0.0.1:{server_port}{path}" if proxy_port else path
    arrived: list[float] = []
    with socket.create_connection(("127.0.0.1", proxy_port or server_port), timeout=30) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{server_port}\r\nAccept: text/event-stream\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        received = b""
        while len(arrived) < events:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"stream ended after {len(arrived)} events: {received[-300:]!r}")
            now = time.perf_counter()
            received += chunk
            while len(arrived) < events and f"data: event {len(arrived) + 1}\n".encode() in received:
                arrived.append(now)
    sent = server.sent.pop(key)
    errors = tuple(
        abs((arrived[i + 1] - arrived[i]) - (sent[i + 1] - sent[i])) * 1000 for i in range(events - 1)
    )
    return SseSample((arrived[0] - sent[0]) * 1000, errors)


def run_sse(ctx: BenchContext, upstream: Upstream, rounds: int) -> Section:
    variants = for_section(SSE)
    samples: dict[str, list[SseSample]] = {v.name: [] for v in variants}
    with sse_server() as server:
        for round_no in range(rounds):
            for variant in variants:
                print(f"  sse round {round_no + 1}/{rounds}: {variant.name}", flush=True)
                samples[variant.name].append(
                    _one(
                        ctx,
                        upstream,
                        server,
                        variant,
                        f"r{round_no}v{len(samples[variant.name])}{id(variant)}",
                    )
                )
    section = Section("sse", "4. SSE: first event and gaps through the proxy")
    section.text(
        f"Upstream sends {EVENTS} events {GAP} s apart (chunked text/event-stream, plain HTTP); first-event "
        "delay = client's arrival − upstream's send of event 1; gap error = worst |gap at the client − gap "
        "at the upstream|. One stream per fresh proxy per round, after a one-event warm-up stream. "
        "A first-event delay near "
        f"{(EVENTS - 1) * GAP * 1000:.0f} ms means the proxy buffered the whole response."
    )
    rows: list[list[str]] = []
    for variant in variants:
        first = stats([s.first_delay_ms for s in samples[variant.name]])
        gap_error = stats([s.worst_gap_error_ms for s in samples[variant.name]])
        behaviour = "buffers (events arrive together)" if first.median > GAP * 1000 else "streams"
        rows.append([variant.name, first.fmt(2), gap_error.fmt(1), behaviour])
    section.table(["variant", "first-event delay ms", "worst gap error ms", "behaviour"], rows)
    reference = stats([s.first_delay_ms for s in samples[STREAMING_REFERENCE]])
    for variant in variants:
        if not variant.failcore:
            continue
        first = stats([s.first_delay_ms for s in samples[variant.name]])
        gap_error = stats([s.worst_gap_error_ms for s in samples[variant.name]])
        extra = first.median - reference.median
        section.targets.append(
            Target(
                f"SSE first event: {variant.name}",
                f"≤ {FIRST_EVENT_TARGET_MS:.0f} ms after bare-stream",
                f"{extra:+.2f} ms ({first.median:.2f} vs {reference.median:.2f})",
                extra <= FIRST_EVENT_TARGET_MS,
            )
        )
        section.targets.append(
            Target(
                f"SSE gap preserved: {variant.name}",
                f"within {GAP_TARGET_MS:.0f} ms",
                f"{gap_error.high:.1f} ms worst",
                gap_error.high <= GAP_TARGET_MS,
            )
        )
    return section


def _one(ctx: BenchContext, upstream: Upstream, server: _SseServer, variant: Variant, key: str) -> SseSample:
    if variant.direct:
        return fetch_events(server, None, key)
    with running_proxy(ctx, variant, upstream) as proxy:
        fetch_events(
            server, proxy.port, key + "warm", events=1
        )  # a fresh proxy's first flow pays lazy set-up
        sample = fetch_events(server, proxy.port, key)
    proxy.cleanup()
    return sample
