"""Speed and memory bounds that used to be timed assertions inside unit tests, measured here instead.

    .venv/bin/python benchmarks/bench_bounds.py [--rounds N]    # prints the section as Markdown
    .venv/bin/python benchmarks/run.py --only bounds             # the same, as part of BENCHMARKS.md

Unit tests keep the correctness half of each claim (the decision, the drop count, the body that
streams, the cut) and assert it by content and ordering; how fast or how small is a number on this
machine, so it is measured and reported here against the limit the test used to hold it to:

- `decide()` on the proxy's hot path (strict.yaml), in decisions/s;
- one decision against a hostile glob (`/*a*a*a*a*a*b` over a 20,000-character path);
- one DLP scan of 100 kB with ReDoS-shaped custom rules, per regex backend;
- `TapeWriter.submit` while the disk takes 0.2 s per write: the slowest submit and all 200;
- peak Python allocations of `iter_events` over a 200,000-line tape, against the tape's size;
- peak Python allocations while a 50 MB response streams through the embedded proxy
  (body cap 64 KiB);
- how long after a stream cut (3 of 10 SSE events, 0.2 s apart) the client sees the abort and the
  proxy closes the upstream connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.harness import REPO, stats
from benchmarks.report import Section, Target

DECIDE_TARGET = 50_000.0  # decisions/s (the proxy's hot path aims at ~100k)
HOSTILE_GLOB_LIMIT = 1.0  # s
REDOS_LIMIT = 2.0  # s per 100 kB scan
SUBMIT_SLOWEST_LIMIT = 0.15  # s: a blocking submit would wait for the 0.2 s disk
SUBMIT_TOTAL_LIMIT = 2.0  # s for 200 submits
READER_PEAK_FRACTION = 1 / 8  # of the tape's size
PROXY_PEAK_LIMIT = 24 * 2**20  # bytes of Python allocations while 50 MB stream through
CUT_CLIENT_LIMIT = 1.3  # s from the request to the client's abort (the upstream would take 1.8 s)
CUT_UPSTREAM_LIMIT = 0.5  # s from the cut to the upstream connection's close

SSE_EVENTS = 10
SSE_GAP = 0.2


def bench_decide(rounds: int) -> list[float]:
    from failcore.policy import decide, load_policy

    policy = load_policy(REPO / "policies" / "strict.yaml")
    rates = []
    for _ in range(rounds):
        count = 20_000
        started = time.perf_counter()
        for _ in range(count):
            decide(policy, host="localhost", port=11434, scheme="http", method="POST", path="/api/chat?x=1")
        rates.append(count / (time.perf_counter() - started))
    return rates


def bench_hostile_glob(rounds: int) -> list[float]:
    from failcore.policy import decide, parse_policy

    policy = parse_policy(
        'mode: enforce\nrules:\n  - path: "/*a*a*a*a*a*b"\n    action: BLOCK\n', "bench.yaml"
    )
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        decision = decide(
            policy, host="h.example", port=443, scheme="https", method="GET", path="/" + "a" * 20_000
        )
        seconds.append(time.perf_counter() - started)
        if decision.decision != "ALLOW":
            raise RuntimeError(f"hostile glob matched: {decision}")
    return seconds


def bench_redos(rounds: int) -> dict[str, list[float]]:
    from failcore.dlp import DlpEngine, parse_custom_rules
    from failcore.dlp.regex_backend import hyperscan_available

    backends = ["re2"] + (["hyperscan"] if hyperscan_available() else [])
    worst: dict[str, list[float]] = {backend: [] for backend in backends}
    text = "a" * 100_000 + "!"
    for _ in range(rounds):
        for backend in backends:
            slowest = 0.0
            for pattern in (r"(a+)+$", r"(a|aa)+b", r"(a*)*c"):
                rules = parse_custom_rules(
                    [{"id": "evil", "regex": pattern, "keywords": []}], source="policy"
                )
                engine = DlpEngine(rules, backend=backend, salt=b"bench")
                started = time.perf_counter()
                engine.scan(text)
                slowest = max(slowest, time.perf_counter() - started)
            worst[backend].append(slowest)
    return worst


def bench_submit(rounds: int, workdir: Path) -> tuple[list[float], list[float]]:
    from failcore.tape.writer import TapeWriter

    class SlowDisk(TapeWriter):
        def _write_bytes(self, data: bytes) -> None:
            time.sleep(0.2)
            super()._write_bytes(data)

    slowest_runs, totals = [], []
    for round_no in range(rounds):
        writer = SlowDisk(
            workdir / f"slow-disk-{round_no}",
            signing_key=Ed25519PrivateKey.generate(),
            run_id="bench",
            queue_size=4,
        )
        writer.start()
        slowest = 0.0
        started = time.perf_counter()
        for i in range(200):
            before = time.perf_counter()
            writer.submit({"kind": "network", "run": "bench", "i": i})
            slowest = max(slowest, time.perf_counter() - before)
        totals.append(time.perf_counter() - started)
        slowest_runs.append(slowest)
        writer.close(timeout=30)
    return slowest_runs, totals


def bench_reader_memory(rounds: int, workdir: Path) -> tuple[list[float], int]:
    from failcore.tape import iter_events
    from failcore.tape.writer import encode_line

    tape = workdir / "reader-tape"
    tape.mkdir(mode=0o700)
    prev = b"0" * 64
    with open(tape / "seg-000001.jsonl", "wb") as f:
        chunk: list[bytes] = []
        for seq in range(1, 200_001):
            line, prev = encode_line(
                prev, seq, b'{"kind":"network","run":"r","i":%d,"pad":"%s"}' % (seq, b"p" * 60)
            )
            chunk.append(line)
            if len(chunk) == 10_000:
                f.write(b"".join(chunk))
                chunk.clear()
    size = (tape / "seg-000001.jsonl").stat().st_size
    peaks = []
    for _ in range(rounds):
        tracemalloc.start()
        try:
            count = sum(1 for _ in iter_events(tape))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        if count != 200_000:
            raise RuntimeError(f"read {count} events of 200,000")
        peaks.append(peak / size)
    return peaks, size


class _Upstream(BaseHTTPRequestHandler):
    """`GET /big`: 50 MB in 64 KiB chunks. `GET /sse`: SSE_EVENTS events SSE_GAP apart (chunked)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        sse = self.path.startswith("/sse")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream" if sse else "application/octet-stream")
        if sse:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(50 * 2**20))
        self.end_headers()
        try:
            if sse:
                for i in range(1, SSE_EVENTS + 1):
                    data = b"data: event %d\n\n" % i
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                    time.sleep(SSE_GAP)
                self.wfile.write(b"0\r\n\r\n")
            else:
                block = b"x" * 65536
                for _ in range(50 * 16):
                    self.wfile.write(block)
        except OSError:
            pass


@contextlib.contextmanager
def _upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _embedded_proxy(workdir: Path, sets: list[str]) -> Iterator[tuple[Any, asyncio.AbstractEventLoop]]:
    """failcore's embedded proxy on its own loop in a thread; yields (EmbeddedProxy, loop)."""
    import os

    from failcore.runner import EmbeddedProxy, ProxySettings

    os.environ["FAILCORE_HOME"] = str(workdir / "home")
    settings = ProxySettings(
        listen_port=0, tape=str(workdir / "tape"), confdir=workdir / "confdir", sets=sets
    )
    proxy = EmbeddedProxy(settings)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(proxy.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    if not started.wait(60):
        raise RuntimeError("the embedded proxy did not start")
    try:
        yield proxy, loop
    finally:
        asyncio.run_coroutine_threadsafe(proxy.stop(5.0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def bench_proxy_body(rounds: int, workdir: Path) -> list[float]:
    peaks = []
    with _upstream() as url:
        for round_no in range(rounds):
            with _embedded_proxy(workdir / f"body-{round_no}", ["failcore_body_cap=65536"]) as (proxy, _):
                received = 0
                tracemalloc.start()
                try:
                    with (
                        httpx.Client(proxy=proxy.url, timeout=60) as client,
                        client.stream("GET", url + "/big") as r,
                    ):
                        for chunk in r.iter_raw(1 << 16):
                            received += len(chunk)
                    _, peak = tracemalloc.get_traced_memory()
                finally:
                    tracemalloc.stop()
                if received != 50 * 2**20:
                    raise RuntimeError(f"received {received} bytes of 50 MiB")
                peaks.append(float(peak))
    return peaks


def _cut_after(limit: int, cut_at: list[float]) -> Callable[[bytes], Any]:
    from failcore.proxy.cutoff import CutVerdict

    seen = 0

    def judge(chunk: bytes) -> CutVerdict | None:
        nonlocal seen
        offset = 0
        while (end := chunk.find(b"\n\n", offset)) != -1:
            if seen == limit:
                cut_at.append(time.time())
                return CutVerdict("budget", detail=f"{limit} events allowed", keep=offset)
            seen += 1
            offset = end + 2
        return None

    return judge


class _Cutter:
    """Loaded after failcore: cuts every streamed response after 3 SSE events."""

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.flows: list[Any] = []
        self.cut_at: list[float] = []

    def responseheaders(self, flow: Any) -> None:
        from failcore.proxy.cutoff import CuttingTap

        if flow.response is None or not flow.response.stream:
            return
        inner = flow.response.stream if callable(flow.response.stream) else None
        state = self.proxy.session.state(flow)
        self.flows.append(flow)
        flow.response.stream = CuttingTap(flow, _cut_after(3, self.cut_at), inner=inner, state=state)


def bench_cut(rounds: int, workdir: Path) -> tuple[list[float], list[float]]:
    client_s, upstream_s = [], []
    with _upstream() as url:
        for round_no in range(rounds):
            with _embedded_proxy(workdir / f"cut-{round_no}", []) as (proxy, loop):
                cutter = _Cutter(proxy)

                async def add(addon: _Cutter = cutter) -> None:
                    proxy.master.addons.add(addon)

                asyncio.run_coroutine_threadsafe(add(), loop).result(10)
                started = time.monotonic()
                with (
                    httpx.Client(proxy=proxy.url, timeout=30) as client,
                    client.stream("GET", url + "/sse") as r,
                    contextlib.suppress(httpx.HTTPError),
                ):
                    for _ in r.iter_raw():
                        pass
                client_s.append(time.monotonic() - started)
                flows, cut_at = cutter.flows, cutter.cut_at
                deadline = time.monotonic() + 10
                while flows and flows[0].server_conn.timestamp_end is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                if not cut_at or not flows or flows[0].server_conn.timestamp_end is None:
                    raise RuntimeError("the stream was not cut")
                upstream_s.append(flows[0].server_conn.timestamp_end - cut_at[0])
    return client_s, upstream_s


def _target(what: str, goal: str, measured: str, passed: bool) -> Target:
    return Target(what, goal, measured, passed)


def run_bounds(_ctx: object, rounds: int) -> Section:
    with tempfile.TemporaryDirectory(prefix="failcore-bounds-") as tmp:
        workdir = Path(tmp)
        print("  bounds: decide", flush=True)
        decide_rate = stats(bench_decide(rounds))
        hostile = stats(bench_hostile_glob(rounds))
        print("  bounds: ReDoS-shaped DLP rules", flush=True)
        redos = {backend: stats(samples) for backend, samples in bench_redos(rounds).items()}
        print("  bounds: tape submit on a slow disk", flush=True)
        slowest, totals = (stats(samples) for samples in bench_submit(rounds, workdir))
        print("  bounds: tape reader memory", flush=True)
        reader_samples, tape_size = bench_reader_memory(rounds, workdir)
        reader = stats(reader_samples)
        print("  bounds: 50 MB body through the proxy", flush=True)
        body = stats(bench_proxy_body(rounds, workdir))
        print("  bounds: stream cut", flush=True)
        cut_client, cut_upstream = (stats(samples) for samples in bench_cut(rounds, workdir))

    section = Section("bounds", "8. Bounds formerly asserted in unit tests")
    section.text(
        "Measured by `benchmarks/bench_bounds.py` (its docstring says what each row does); the limit is "
        "the one the unit test used to assert. The tests keep the correctness half of each claim."
    )
    rows = [
        ("`decide()`, strict.yaml, hot path", decide_rate.fmt(0, "/s"), f"≥ {DECIDE_TARGET:,.0f}/s",
         decide_rate.median >= DECIDE_TARGET),
        ("one decision, hostile glob over 20,000 chars", hostile.fmt(4, " s"), f"< {HOSTILE_GLOB_LIMIT} s",
         hostile.high < HOSTILE_GLOB_LIMIT),
        *(
            (f"DLP scan of 100 kB, ReDoS-shaped rules, {backend} (slowest of 3)", s.fmt(4, " s"),
             f"< {REDOS_LIMIT} s", s.high < REDOS_LIMIT)
            for backend, s in redos.items()
        ),
        ("`TapeWriter.submit` on a 0.2 s/write disk, slowest of 200", slowest.fmt(5, " s"),
         f"< {SUBMIT_SLOWEST_LIMIT} s", slowest.high < SUBMIT_SLOWEST_LIMIT),
        ("`TapeWriter.submit` on a 0.2 s/write disk, all 200", totals.fmt(4, " s"),
         f"< {SUBMIT_TOTAL_LIMIT} s", totals.high < SUBMIT_TOTAL_LIMIT),
        (f"`iter_events` peak allocations / tape size ({tape_size / 2**20:.1f} MiB, 200,000 lines)",
         reader.fmt(4), f"< {READER_PEAK_FRACTION:.3f}", reader.high < READER_PEAK_FRACTION),
        ("peak Python allocations, 50 MB response through the proxy (MiB)",
         stats([p / 2**20 for p in body.samples]).fmt(1), f"< {PROXY_PEAK_LIMIT / 2**20:.0f} MiB",
         body.high < PROXY_PEAK_LIMIT),
        ("stream cut after 3 of 10 events 0.2 s apart: request to client abort", cut_client.fmt(2, " s"),
         f"< {CUT_CLIENT_LIMIT} s", cut_client.high < CUT_CLIENT_LIMIT),
        ("stream cut: cut to upstream connection closed", cut_upstream.fmt(3, " s"),
         f"< {CUT_UPSTREAM_LIMIT} s", cut_upstream.high < CUT_UPSTREAM_LIMIT),
    ]  # fmt: skip
    section.table(
        ["what", "measured (median, min–max)", "limit", ""],
        [[what, measured, goal, "PASS" if ok else "**MISS**"] for what, measured, goal, ok in rows],
    )
    section.targets.extend(_target(what, goal, measured, ok) for what, measured, goal, ok in rows)
    return section


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    section = run_bounds(None, args.rounds)
    print("\n".join([f"## {section.title}", "", *section.lines]))
    return 0 if all(target.passed for target in section.targets) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
