"""A real mitmdump under a load of recorded, streamed LLM calls: CPU per call, thread by thread, for
failcore checkouts side by side.

    .venv/bin/python benchmarks/llm_proxy_threads.py [--repo /tmp/before] [--repo .] [--rounds 3]
        [--seconds 5] [--connections 4]

The upstream (a separate process) replays the recorded streamed answers benchmarks/llm_exchange_cost.py
picks, with their recorded framing (chunked, an SSE event a chunk): OpenAI chat at /v1/chat/completions,
Anthropic messages at /v1/messages. wrk posts each call's recorded prompt padded to ~30 KB through the
proxy (plain HTTP, keep-alive), the two providers in turn. failcore observe (the shipped default policy,
DLP on). Per call: the CPU (user+system) of the proxy's event loop, of its other threads (the tape
writer, the evidence worker's and past-cap scans' helpers; Python before 3.14 names no OS thread, so
they are counted together), of the whole process, and of its DLP evidence worker (/proc), measured
until the proxy is idle again (the evidence of the last calls included). Rounds interleave checkouts.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.llm_exchange_cost import _exchanges, _padding_texts, padded_request, pick, wire_pieces

PATHS = {"/v1/chat/completions": "openai-sse", "/v1/messages": "anthropic-sse"}


class _Replay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answers: ClassVar[dict[str, tuple[list[bytes], dict[str, str]]]] = {}

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        pieces, headers = self.answers[self.path]
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        for piece in pieces:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # (wrk drops its connections when its time is up)


def serve() -> None:
    """The upstream: prints its port, then replays until killed."""
    recorded = _exchanges()
    _Replay.answers = {path: wire_pieces(pick(kind, recorded)) for path, kind in PATHS.items()}
    server = _Server(("127.0.0.1", 0), _Replay)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def _lua(port: int) -> str:
    from benchmarks.loadgen import RESULT_MARK

    recorded = _exchanges()
    texts = _padding_texts(recorded)
    requests = []
    for path, kind in PATHS.items():
        body = padded_request(pick(kind, recorded)["request_body"], texts).decode()
        assert "]=====]" not in body
        auth = (
            '["x-api-key"]="sk-ant-api03-bench-not-a-secret", ["anthropic-version"]="2023-06-01"'
            if "messages" in path
            else '["Authorization"]="Bearer sk-bench-not-a-secret"'
        )
        requests.append(
            f'wrk.format("POST", "http://127.0.0.1:{port}{path}", {{["Content-Type"]="application/json", '
            f'["Host"]="127.0.0.1:{port}", {auth}}}, [=====[{body}]=====])'
        )
    return f"""
local reqs = {{}}
local i = 0
function init(args)
  reqs[1] = {requests[0]}
  reqs[2] = {requests[1]}
end
function request()
  i = i % 2 + 1
  return reqs[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{RESULT_MARK}{{"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repo", type=Path, action="append")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--bare", action="store_true", help="also mitmdump without failcore (streaming)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    from benchmarks.harness import CommandLog, print_medians, print_round, stop_process
    from benchmarks.loadgen import wrk_for
    from benchmarks.proxy_threads import children_cpu_seconds, for_repo, settle, thread_stats
    from benchmarks.report import machine_info
    from benchmarks.servers import BenchContext, Upstream, running_proxy
    from benchmarks.variants import BARE_STREAMING, OBSERVE
    from failcore.demo.certs import generate_certificate

    repos = [r.resolve() for r in (args.repo or [Path(__file__).resolve().parent.parent])]
    variants = [BARE_STREAMING] * args.bare + [for_repo(OBSERVE, repo) for repo in repos]
    rows: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    upstream_process = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert upstream_process.stdout is not None
        port = int(upstream_process.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="failcore-llm-threads-") as tmp:
            workdir = Path(tmp)
            ctx = BenchContext(workdir, CommandLog(), quick=True)
            certs = generate_certificate(workdir, "127.0.0.1")
            upstream = Upstream(port, port, certs.cert_path)
            script = workdir / "llm.lua"
            script.write_text(_lua(port))
            for round_no in range(args.rounds):
                for variant in variants:
                    with running_proxy(ctx, variant, upstream) as proxy:
                        address = f"127.0.0.1:{proxy.port}"
                        settle(proxy.pid)
                        wrk_for(address, script, connections=args.connections, seconds=2, log=ctx.log,
                                label="warm-up")  # fmt: skip
                        settle(proxy.pid)
                        before, kids0 = thread_stats(proxy.pid), children_cpu_seconds(proxy.pid)
                        result = wrk_for(
                            address, script, connections=args.connections, seconds=args.seconds,
                            log=ctx.log, label="load",
                        )  # fmt: skip
                        settle(proxy.pid)  # (the writer and the worker finish the calls' evidence)
                        after, kids1 = thread_stats(proxy.pid), children_cpu_seconds(proxy.pid)
                        n = max(result.requests, 1)
                        row: dict[str, float] = {"calls/s": result.rps, "errors": result.errors}
                        process = 0.0
                        for name, (cpu, _, _) in after.items():
                            used = (cpu - before.get(name, (0.0, 0, 0))[0]) / n * 1e6
                            process += used
                            # (Python names no OS thread before 3.14: the writer is among the others)
                            key = name if name in ("loop", "tape-writer") else "other threads"
                            row[f"{key} µs"] = row.get(f"{key} µs", 0.0) + used
                        row["process µs"] = process
                        row["worker µs"] = max(kids1 - kids0, 0.0) / n * 1e6
                        row["load"] = os.getloadavg()[0]
                        rows[variant.name].append(row)
                        print_round(f"round {round_no + 1} {variant.name}", row, 2)
    finally:
        stop_process(upstream_process)
    info = dict(machine_info())
    print(f"\nCPU: {info.get('CPU')}, {info.get('cores (online)')} cores")
    print_medians(rows, 2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
