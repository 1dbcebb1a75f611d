"""CPU failcore spends per exchange inside the proxy process: its hooks and evidence on the event loop's
thread, and the tape writer's thread, split; no sockets and no mitmproxy server around it.

    .venv/bin/python benchmarks/hooks_bench.py [--exchanges 3000] [--rounds 5] [--repo /tmp/before ...]
        [--variant observe --variant enforce ...] [--vary-headers] [--by-concern]

The whole addon (failcore.proxy.FailCore, as `mitmdump -s addons/failcore_addon.py` loads it) runs in
mitmproxy's test harness with a real tape writer (and DLP evidence worker) on a temporary tape. Each
exchange is the throughput benchmark's (a 1 KB JSON POST answered with a 1 KB JSON), a fresh mitmproxy
test flow taken through requestheaders, request, responseheaders and response as mitmproxy calls them;
every 8 exchanges the event loop turns once (the evidence backlog builds there). CPU is thread time:
the loop's thread (all of it, and the hook calls alone, and of those DlpGuard.request, the blocking DLP
scan, alone: `dlp_request`), the tape writer's thread and the DLP evidence worker, from /proc; medians
over rounds. Variants: observe (the shipped default policy), no-DLP, enforce (the throughput
benchmark's: strict.yaml + an allow rule for the upstream, budgets, DLP that can BLOCK).
`--vary-headers` gives each request and response an `x-request-id` of its own, as real providers'
do, so no header block repeats from one exchange to the next. `--by-concern` also times each
concern's hook calls on their own (`Concern.hook`: the thread CPU of its synchronous part; the timer
itself adds ~2-4 µs a call).

With several --repo checkouts, each round runs every checkout in its own child process, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("observe", "no-DLP", "enforce")


def _process_cpu(tid: int | None = None) -> float:
    where = f"/proc/self/task/{tid}/stat" if tid else "/proc/self/stat"
    fields = Path(where).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _time_concerns(addon: object, totals: dict[str, float]) -> None:
    """Rebuild the addon's per-exchange hooks so each concern's call is timed on its own (thread CPU
    time of its synchronous part), into `totals` keyed `Concern.hook`."""
    try:  # The checkout's own dispatch, pruned as it prunes; every handler in a checkout from before it.
        from failcore.proxy.dispatch import pruned_dispatcher
    except ImportError:
        from failcore.proxy import _dispatcher  # type: ignore[attr-defined]

        def pruned_dispatcher(
            session: object, hook: str, owners: list[object], handlers: list[object]
        ) -> object:
            return _dispatcher(handlers)

    def timed(key: str, handler: object) -> object:
        def call(*args: object) -> object:
            t0 = time.thread_time()
            try:
                return handler(*args)  # type: ignore[operator]
            finally:
                totals[key] = totals.get(key, 0.0) + time.thread_time() - t0

        return call

    for hook in ("requestheaders", "request", "responseheaders", "response"):
        owners = [c for c in addon.concerns if callable(getattr(c, hook, None))]  # type: ignore[attr-defined]
        handlers = [timed(f"{type(c).__name__}.{hook}", getattr(c, hook)) for c in owners]
        if handlers:
            setattr(addon, hook, pruned_dispatcher(addon.session, hook, owners, handlers))  # type: ignore[attr-defined,arg-type]


def measure(
    policy: str | None, exchanges: int, workdir: Path, vary: bool = False, by_concern: bool = False
) -> dict[str, float]:
    from mitmproxy import hooks
    from mitmproxy.addonmanager import Loader
    from mitmproxy.test import taddons, tflow

    from benchmarks.servers import REQUEST_BODY_BYTES, RESPONSE_BODY_BYTES, json_document
    from failcore.proxy import FailCore
    from failcore.proxy.dlpguard import DlpGuard

    dlp_time = [0.0]
    blocking_scan = DlpGuard.request

    def timed_request(self: DlpGuard, flow: object) -> object:
        t0 = time.thread_time()
        try:
            return blocking_scan(self, flow)  # type: ignore[arg-type]
        finally:
            dlp_time[0] += time.thread_time() - t0

    DlpGuard.request = timed_request  # type: ignore[method-assign,assignment]

    request_body = json_document(REQUEST_BODY_BYTES, "chat.completion.request").encode()
    response_body = json_document(RESPONSE_BODY_BYTES, "chat.completion").encode()
    addon = FailCore()
    concerns: dict[str, float] = {}
    if by_concern:
        _time_concerns(addon, concerns)
    options: dict[str, object] = {"confdir": str(workdir / "confdir"), "failcore_tape": str(workdir / "tape")}
    if policy:
        options["failcore_policy"] = policy

    async def run() -> dict[str, float]:
        with taddons.context() as tctx:
            addon.load(Loader(tctx.master))  # type: ignore[attr-defined]
            tctx.master.addons.add(addon)
            tctx.options.update(**options)
            tctx.master.addons.invoke_addon_sync(addon, hooks.ConfigureHook(set(tctx.options.keys())))
            result = addon.running()  # type: ignore[attr-defined]
            if result is not None:
                await result
            writer = addon.recorder.writer
            assert writer is not None

            def flows(n: int) -> list[object]:
                out = []
                for _ in range(n):
                    f = tflow.tflow(resp=True)
                    f.request.host, f.request.port, f.request.scheme = "127.0.0.1", 8080, "http"
                    # As the throughput benchmark's client connects: plain HTTP to 127.0.0.1 (tflow's
                    # connections name "address" and an SNI, which the enforce policy does not allow).
                    f.server_conn.address = ("127.0.0.1", 8080)
                    f.client_conn.sni = None
                    f.request.method, f.request.path = "POST", "/echo"
                    f.request.headers["content-type"] = "application/json"
                    f.request.content = request_body
                    f.response.headers["content-type"] = "application/json"
                    f.response.content = response_body
                    if vary:
                        f.request.headers["x-request-id"] = os.urandom(12).hex()
                        f.response.headers["x-request-id"] = "req_" + os.urandom(16).hex()
                    out.append(f)
                return out

            hook_time = [0.0]

            async def one_batch(batch: list[object]) -> None:
                t0 = time.thread_time()
                for f in batch:
                    response = f.response  # type: ignore[attr-defined]
                    f.response = None  # type: ignore[attr-defined]
                    for name in ("requestheaders", "request"):
                        hook = getattr(addon, name, None)
                        if hook is not None and (r := hook(f)) is not None:
                            await r
                    f.response = response  # type: ignore[attr-defined]
                    for name in ("responseheaders", "response"):
                        hook = getattr(addon, name, None)
                        if hook is not None and (r := hook(f)) is not None:
                            await r
                hook_time[0] += time.thread_time() - t0
                await asyncio.sleep(0)

            warm = flows(200)
            for i in range(0, len(warm), 8):
                await one_batch(warm[i : i + 8])
            writer.flush(timeout=60)
            time.sleep(1.0)  # the DLP evidence worker starts
            writer.flush(timeout=60)
            todo = flows(exchanges)
            tid = writer._thread.native_id  # type: ignore[union-attr]
            main_tid = threading.get_native_id()
            loop0, writer0 = _process_cpu(main_tid), _process_cpu(tid)
            hook_time[0] = dlp_time[0] = 0.0
            concerns.clear()
            kids0 = _children_cpu()
            for i in range(0, len(todo), 8):
                await one_batch(todo[i : i + 8])
            writer.flush(timeout=120)
            loop1 = _process_cpu(main_tid)
            kids1, writer1 = _children_cpu(), _process_cpu(tid)
            addon.recorder.done()
            loop_us = (loop1 - loop0) / exchanges * 1e6
            return {
                "loop": loop_us,
                "hooks": hook_time[0] / exchanges * 1e6,
                "dlp_request": dlp_time[0] / exchanges * 1e6,
                "writer": (writer1 - writer0) / exchanges * 1e6,
                "worker": max(kids1 - kids0, 0.0) / exchanges * 1e6,
                **{k: v / exchanges * 1e6 for k, v in sorted(concerns.items())},
            }

    return asyncio.run(run())


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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repo", type=Path, action="append")
    parser.add_argument(
        "--variant", action="append", choices=VARIANTS, help="observe and no-DLP unless given (repeatable)"
    )
    parser.add_argument("--vary-headers", action="store_true", help="an x-request-id of its own per exchange")
    parser.add_argument(
        "--by-concern", action="store_true", help="also time each concern's hook calls on their own"
    )
    parser.add_argument("--child", nargs=2, metavar=("POLICY", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        policy = None if args.child[0] == "-" else args.child[0]
        print(
            json.dumps(
                measure(policy, args.exchanges, Path(args.child[1]), args.vary_headers, args.by_concern)
            )
        )
        return 0
    repos = [r.resolve() for r in (args.repo or [HERE.parent])]
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="failcore-hooks-") as tmp:
        no_dlp = Path(tmp) / "no-dlp.yaml"
        no_dlp.write_text("mode: observe\ndefault: ALLOW\ndlp:\n  enabled: false\n")
        enforce = Path(tmp) / "enforce.yaml"
        sys.path.append(str(HERE.parent))  # (appended: a child's --repo checkout comes first there)
        from benchmarks.servers import enforce_policy_text

        enforce.write_text(enforce_policy_text())
        policies = {"observe": "-", "no-DLP": str(no_dlp), "enforce": str(enforce)}
        for round_no in range(args.rounds):
            for variant in args.variant or ["observe", "no-DLP"]:
                policy = policies[variant]
                for repo in repos:
                    work = Path(tempfile.mkdtemp(dir=tmp))
                    env = dict(os.environ, PYTHONPATH=f"{repo}{os.pathsep}{HERE.parent}")
                    argv_child = [
                        sys.executable,
                        str(HERE / "hooks_bench.py"),
                        "--exchanges",
                        str(args.exchanges),
                        *(["--vary-headers"] if args.vary_headers else []),
                        *(["--by-concern"] if args.by_concern else []),
                    ]
                    out = subprocess.run(
                        [*argv_child, "--child", policy, str(work)],
                        env=env,
                        cwd=repo,
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                    if out.returncode != 0:
                        print(out.stderr[-3000:], file=sys.stderr)
                        return 1
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    name = f"{variant} [{repo.name}]"
                    results.setdefault(name, []).append(row)
                    print(
                        f"round {round_no + 1} {name}: "
                        + ", ".join(f"{k} {v:,.0f} µs" for k, v in row.items())
                    )
    print("\nCPU µs per exchange, medians (min–max):")
    for name, rows in results.items():
        cells = []
        for key in rows[0]:
            if not all(key in r for r in rows):
                continue
            values = [r[key] for r in rows]
            cells.append(f"{key} {statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})")
        print(f"  {name}: " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
