"""CPU failcore spends per realistic LLM exchange inside the proxy process, thread by thread, and what
building its event costs, part by part.

    .venv/bin/python benchmarks/llm_exchange_cost.py [--exchanges 400] [--rounds 3] [--repo /tmp/before ...]
        [--breakdown]

The exchanges are real recorded traffic (tests/data/conformance/llm/openllmetry-cassettes.jsonl): for
each of OpenAI chat completions and Anthropic messages, the recorded JSON answer (gzip, chunked, no
length: as the providers send it) and the recorded SSE answer, each the exchange of median answer size
among that provider's and kind's 200s. Each request is padded to ~30 KB (earlier turns of the
conversation, made of other recorded requests' message texts), as an agent's prompt is.

The whole addon (failcore.proxy.FailCore) runs in mitmproxy's test harness with a real tape writer and
DLP evidence worker, the shipped default policy (observe, DLP on). Each exchange is taken through the
hooks as mitmproxy calls them: requestheaders (no body yet), request, responseheaders, then, as the
stream tap asks, the answer's wire bytes through the response's `stream` callable (SSE at event
boundaries; a gzip body in 4 KB pieces) and its end (b""), then response; every 8 exchanges the event
loop turns once. CPU is thread time (/proc): the loop's thread (`loop`, of which the hook calls and
stream chunks alone: `hooks`), the tape writer's thread (`writer`) and the DLP evidence worker
(`worker`); `process` is every thread of the proxy process (time.process_time); `backlog build`
is the evidence built on the loop while it is idle (failcore.evidence.backlog), part of `loop` and,
when a hook's await let it run, of `hooks`. Each kind runs on its own.

`--breakdown` times, in this process, the parts of building one such exchange's event from its
snapshot (as the recorder takes it): headers, each body's evidence (decode, preview, hash), the stream
block, the LLM block (contract drift), the event dict, the DLP pass over it, and its tape line.

With several --repo checkouts, each round runs every checkout in its own child process, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent))  # (appended: a child's --repo checkout, on PYTHONPATH, comes first)
CASSETTES = HERE.parent / "tests" / "data" / "conformance" / "llm" / "openllmetry-cassettes.jsonl"
PROMPT_BYTES = 30_000
KINDS = {
    "openai-json": ("api.openai.com:443", "/v1/chat/completions", "application/json"),
    "openai-sse": ("api.openai.com:443", "/v1/chat/completions", "text/event-stream"),
    "anthropic-json": ("api.anthropic.com:443", "/v1/messages", "application/json"),
    "anthropic-sse": ("api.anthropic.com:443", "/v1/messages", "text/event-stream"),
}
GZIP_PIECE = 4096


def _exchanges() -> list[dict[str, Any]]:
    with CASSETTES.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _padding_texts(exchanges: list[dict[str, Any]]) -> list[str]:
    """Message texts of other recorded requests, to pad a prompt with (real text, not filler)."""
    texts = []
    for e in exchanges:
        try:
            doc = json.loads(e["request_body"] or "")
        except ValueError:
            continue
        for m in doc.get("messages", []) if isinstance(doc, dict) else []:
            if isinstance(m, dict) and isinstance(m.get("content"), str) and len(m["content"]) > 40:
                texts.append(m["content"])
    return texts


def padded_request(body: str, texts: list[str]) -> bytes:
    """The request with earlier turns put before its messages until it is ~PROMPT_BYTES long."""
    doc = json.loads(body)
    turns: list[dict[str, str]] = []
    size = len(body)
    i = 0
    while size < PROMPT_BYTES:
        text = texts[i % len(texts)]
        turns.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
        size += len(text) + 32
        i += 1
    doc["messages"] = turns + doc["messages"]
    return json.dumps(doc).encode()


def pick(kind: str, exchanges: list[dict[str, Any]]) -> dict[str, Any]:
    """The exchange of median answer size among the recorded 200s of this provider and kind."""
    host, path, ctype = KINDS[kind]
    found = [
        e
        for e in exchanges
        if e["host"] == host
        and e["path"] == path
        and e["status"] == 200
        and (e["response_headers"].get("content-type") or "").startswith(ctype)
        and not e["response_trimmed"]
        and not e["response_reconstructed"]
        and not e["request_trimmed"]
    ]
    found.sort(key=lambda e: (len(e["response_body"]), e["id"]))
    return found[len(found) // 2]


def wire_pieces(exchange: dict[str, Any]) -> tuple[list[bytes], dict[str, str]]:
    """The answer as it comes off the wire (its recorded coding), in the pieces mitmproxy hands on, and
    its recorded framing headers."""
    recorded = exchange["response_headers"]
    headers = {k: v for k, v in recorded.items() if v is not None and k != "content-length"}
    body = exchange["response_body"].encode()
    if recorded.get("content-encoding") == "gzip":
        wire = gzip.compress(body, mtime=0)
        return [wire[i : i + GZIP_PIECE] for i in range(0, len(wire), GZIP_PIECE)], headers
    parts, start = [], 0
    while (end := body.find(b"\n\n", start)) >= 0:
        parts.append(body[start : end + 2])
        start = end + 2
    if start < len(body):
        parts.append(body[start:])
    return parts, headers


def _thread_cpu(ident: int) -> float:
    """A thread's CPU seconds, to the nanosecond (/proc counts 10 ms ticks)."""
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


def _children_cpu() -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in children:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def make_flow(exchange: dict[str, Any], request_body: bytes) -> Any:
    from mitmproxy import http
    from mitmproxy.test import tflow

    host = exchange["host"].rsplit(":", 1)[0]
    f = tflow.tflow()
    f.request.host, f.request.port, f.request.scheme = host, 443, "https"
    f.server_conn.address = (host, 443)
    f.client_conn.sni = host
    f.request.method, f.request.path = "POST", exchange["path"]
    f.request.headers["host"] = host
    f.request.headers["content-type"] = "application/json"
    if "anthropic" in host:
        f.request.headers["x-api-key"] = "sk-ant-api03-bench-not-a-secret"
        f.request.headers["anthropic-version"] = "2023-06-01"
    else:
        f.request.headers["authorization"] = "Bearer sk-bench-not-a-secret"
    f.request.headers["content-length"] = str(len(request_body))
    f.request.data.content = None  # (requestheaders: the body has not arrived)
    f.metadata["bench_body"] = request_body
    _, headers = wire_pieces(exchange)
    f.metadata["bench_response"] = http.Response.make(exchange["status"], b"", headers)
    return f


def measure(kinds: list[str], exchanges_per_kind: int, workdir: Path, breakdown: bool) -> dict[str, float]:
    from mitmproxy import hooks
    from mitmproxy.addonmanager import Loader
    from mitmproxy.test import taddons

    from benchmarks.hooks_bench import _time_concerns
    from failcore.evidence.backlog import EvidenceBacklog
    from failcore.proxy import FailCore
    from failcore.proxy.recorder import Recorder

    snaps: list[Any] = []
    hand_over = Recorder._build_or_hand_over

    def keep(self: Recorder, snap: Any, settings: Any) -> Any:
        snaps[:] = [snap, settings]
        return hand_over(self, snap, settings)

    Recorder._build_or_hand_over = keep  # type: ignore[method-assign]
    backlog_time = [0.0]
    build_on_loop = EvidenceBacklog.build

    def timed_build(self: EvidenceBacklog) -> None:
        t0 = time.thread_time()
        try:
            build_on_loop(self)
        finally:
            backlog_time[0] += time.thread_time() - t0

    EvidenceBacklog.build = timed_build  # type: ignore[method-assign]
    recorded = _exchanges()
    texts = _padding_texts(recorded)
    addon = FailCore()
    concerns: dict[str, float] = {}
    _time_concerns(addon, concerns)
    stream_time = [0.0]
    options: dict[str, object] = {"confdir": str(workdir / "confdir"), "failcore_tape": str(workdir / "tape")}

    async def one(f: Any, pieces: list[bytes]) -> None:
        for name in ("requestheaders",):
            if (r := getattr(addon, name)(f)) is not None:
                await r
        f.request.data.content = f.metadata["bench_body"]
        f.request.timestamp_end = time.time()
        if (r := addon.request(f)) is not None:  # type: ignore[attr-defined]
            await r
        resp = f.metadata["bench_response"]
        resp.data.content = None
        resp.timestamp_start = time.time()
        f.response = resp
        if (r := addon.responseheaders(f)) is not None:  # type: ignore[attr-defined]
            await r
        stream = f.response.stream
        if callable(stream):
            t0 = time.thread_time()
            for piece in pieces:
                stream(piece)
            stream(b"")
            stream_time[0] += time.thread_time() - t0
        else:
            resp.data.content = b"".join(pieces)
        resp.timestamp_end = time.time()
        if (r := addon.response(f)) is not None:  # type: ignore[attr-defined]
            await r

    async def run() -> dict[str, float]:
        out: dict[str, float] = {}
        with taddons.context() as tctx:
            addon.load(Loader(tctx.master))  # type: ignore[attr-defined]
            tctx.master.addons.add(addon)
            tctx.options.update(**options)
            tctx.master.addons.invoke_addon_sync(addon, hooks.ConfigureHook(set(tctx.options.keys())))
            if (result := addon.running()) is not None:  # type: ignore[attr-defined]
                await result
            writer = addon.recorder.writer
            assert writer is not None
            main_tid = threading.get_ident()
            tid = writer._thread.ident  # type: ignore[union-attr]
            for kind in kinds:
                exchange = pick(kind, recorded)
                body = padded_request(exchange["request_body"], texts)
                pieces, _ = wire_pieces(exchange)
                for f in [make_flow(exchange, body) for _ in range(40)]:  # warm-up, not timed
                    await one(f, pieces)
                writer.flush(timeout=60)
                time.sleep(1.0)  # the DLP evidence worker starts (the first kind)
                writer.flush(timeout=60)
                n = exchanges_per_kind
                todo = [make_flow(exchange, body) for _ in range(n)]
                hook_time = stream_time[0] = backlog_time[0] = 0.0
                concerns.clear()
                all0 = time.process_time()
                loop0, writer0, kids0 = _thread_cpu(main_tid), _thread_cpu(tid), _children_cpu()
                for i in range(0, n, 8):
                    t0 = time.thread_time()
                    for f in todo[i : i + 8]:
                        await one(f, pieces)
                    hook_time += time.thread_time() - t0
                    await asyncio.sleep(0)
                writer.flush(timeout=120)
                loop1, writer1, kids1 = _thread_cpu(main_tid), _thread_cpu(tid), _children_cpu()
                all1 = time.process_time()
                per = 1e6 / n
                out[f"{kind} loop"] = (loop1 - loop0) * per
                out[f"{kind} hooks"] = hook_time * per
                out[f"{kind} writer"] = (writer1 - writer0) * per
                out[f"{kind} worker"] = max(kids1 - kids0, 0.0) * per
                out[f"{kind} process"] = (all1 - all0) * per
                out[f"{kind} backlog build"] = backlog_time[0] * per
                out[f"{kind} stream chunks"] = stream_time[0] * per
                for key, seconds in sorted(concerns.items()):
                    out[f"{kind} {key}"] = seconds * per
                if breakdown:
                    from benchmarks.llm_build_parts import build_parts

                    for key, us in build_parts(*snaps).items():
                        out[f"{kind} build: {key}"] = us
            addon.recorder.done()
        return out

    return asyncio.run(run())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repo", type=Path, action="append")
    parser.add_argument("--kind", action="append", choices=list(KINDS))
    parser.add_argument("--breakdown", action="store_true", help="time the parts of building one event")
    parser.add_argument("--child", metavar="WORKDIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    kinds = args.kind or list(KINDS)
    if args.child:
        print(json.dumps(measure(kinds, args.exchanges, Path(args.child), args.breakdown)))
        return 0
    repos = [r.resolve() for r in (args.repo or [HERE.parent])]
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="failcore-llmcost-") as tmp:
        for round_no in range(args.rounds):
            for repo in repos:
                work = Path(tempfile.mkdtemp(dir=tmp))
                env = dict(os.environ, PYTHONPATH=f"{repo}{os.pathsep}{HERE.parent}")
                argv_child = [sys.executable, str(HERE / "llm_exchange_cost.py"), "--exchanges"]
                argv_child += [str(args.exchanges), *(f"--kind={k}" for k in kinds), "--child", str(work)]
                argv_child += ["--breakdown"] if args.breakdown else []
                out = subprocess.run(
                    argv_child, env=env, cwd=repo, capture_output=True, text=True, check=False
                )
                if out.returncode != 0:
                    print(out.stderr[-3000:], file=sys.stderr)
                    return 1
                row = json.loads(out.stdout.strip().splitlines()[-1])
                name = repo.name
                results.setdefault(name, []).append(row)
                print(
                    f"round {round_no + 1} [{name}] load {os.getloadavg()[0]:.2f}: "
                    + ", ".join(f"{k} {v:,.0f}" for k, v in row.items())
                )
    from benchmarks.report import machine_info

    info = dict(machine_info())
    print(
        f"\nCPU: {info.get('CPU')}, {info.get('cores (online)')} cores, load at start "
        f"{info.get('load average at start')}, now {os.getloadavg()[0]:.2f}"
    )
    print(f"CPU µs per exchange, medians (min–max) over {args.rounds} rounds of {args.exchanges}:")
    for name, rows in results.items():
        print(f"| [{name}] kind | loop | hooks | writer | process (all threads) | worker |")
        print("|---|---|---|---|---|---|")
        for kind in kinds:
            cells = []
            for part in ("loop", "hooks", "writer", "process", "worker"):
                values = [r[f"{kind} {part}"] for r in rows]
                cells.append(f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})")
            print(f"| {kind} | " + " | ".join(cells) + " |")
        main_parts = {"loop", "hooks", "writer", "process", "worker"}
        for kind in kinds:
            keys = [k for k in rows[0] if k.startswith(f"{kind} ") and k[len(kind) + 1 :] not in main_parts]
            cells = []
            for key in keys:
                values = [r[key] for r in rows if key in r]
                cells.append(f"{key[len(kind) + 1 :]} {statistics.median(values):,.1f}")
            print(f"  {kind}: " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
