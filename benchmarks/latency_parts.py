"""Where the time of one exchange goes with ONE connection: the event loop's thread on a CPU, waiting
for a CPU, or asleep, per exchange, for proxy variants and failcore checkouts side by side.

    .venv/bin/python benchmarks/latency_parts.py [--repo /tmp/before] [--repo .] [--rounds 6] [--seconds 3]
        [--variant bare --variant observe --variant no-DLP --variant enforce]

With one sequential connection (wrk -c1, 1 KB JSON POST, plain HTTP, after a 1 s warm-up and the proxy
idle again) the proxy's event loop is on the critical path of every exchange, so the time between two
exchanges (1 / requests per second) splits, for the loop's thread, into (from /proc/…/schedstat, ns):
  on-CPU    what the loop executes (mitmproxy and the addon's hooks, evidence built on the loop, GC);
  run-queue time the loop was runnable but waited for a CPU (the machine's load, and the proxy's own
            other threads and children competing for the cores);
  asleep    the rest: the loop blocked, waiting for the client or the upstream (epoll), or for the
            GIL held by another thread of the proxy (a futex; counted in voluntary switches).
Variants and checkouts alternate within each round. Per round, each variant's numbers are paired with
bare's of the same round; medians over rounds. CPU of the proxy's other threads (the tape writer) and of
its children (the DLP evidence worker) per exchange are shown too: they run beside the loop.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import CommandLog
from benchmarks.loadgen import wrk_for, wrk_script
from benchmarks.proxy_threads import children_cpu_seconds, for_repo, settle, thread_stats
from benchmarks.servers import BenchContext, nginx_upstream, running_proxy
from benchmarks.variants import BARE, ENFORCE, OBSERVE, OBSERVE_NO_DLP, Variant

VARIANTS = {"observe": OBSERVE, "no-DLP": OBSERVE_NO_DLP, "enforce": ENFORCE}
COLUMNS = (
    "p50",
    "p90",
    "p99",
    "wall",
    "on-CPU",
    "run-queue",
    "asleep",
    "loop vcsw",
    "loop icsw",
    "threads",
    "children",
)


def loop_schedstat(pid: int) -> tuple[int, int]:
    """(ns on a CPU, ns waiting on a run queue) of the process's main thread, the event loop."""
    fields = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    return int(fields[0]), int(fields[1])


def measure(
    ctx: BenchContext, variant: Variant, upstream: object, script: Path, seconds: float
) -> dict[str, float]:
    with running_proxy(ctx, variant, upstream) as proxy:  # type: ignore[arg-type]
        address = f"127.0.0.1:{proxy.port}"
        settle(proxy.pid)
        wrk_for(address, script, connections=1, seconds=1, log=ctx.log, label="warm-up")
        settle(proxy.pid)
        sched0, threads0, kids0 = (
            loop_schedstat(proxy.pid),
            thread_stats(proxy.pid),
            children_cpu_seconds(proxy.pid),
        )
        result = wrk_for(address, script, connections=1, seconds=seconds, log=ctx.log, label="1 connection")
        sched1, threads1, kids1 = (
            loop_schedstat(proxy.pid),
            thread_stats(proxy.pid),
            children_cpu_seconds(proxy.pid),
        )
    proxy.cleanup()
    n = max(result.requests, 1)
    wall = 1e6 / result.rps
    on_cpu = (sched1[0] - sched0[0]) / n / 1e3
    queued = (sched1[1] - sched0[1]) / n / 1e3
    loop0, loop1 = threads0.get("loop", (0.0, 0, 0)), threads1["loop"]
    others = sum(
        cpu - threads0.get(name, (0.0, 0, 0))[0] for name, (cpu, _, _) in threads1.items() if name != "loop"
    )
    return {
        "p50": result.p50_us,
        "p90": result.p90_us,
        "p99": result.p99_us,
        "wall": wall,
        "on-CPU": on_cpu,
        "run-queue": queued,
        "asleep": wall - on_cpu - queued,
        "loop vcsw": (loop1[1] - loop0[1]) / n,
        "loop icsw": (loop1[2] - loop0[2]) / n,
        "threads": max(others, 0.0) / n * 1e6,
        "children": max(kids1 - kids0, 0.0) / n * 1e6,
        "load": os.getloadavg()[0],
    }


def fmt(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 10 else f"{value:,.0f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repo", type=Path, action="append", help="failcore checkout (repeat)")
    parser.add_argument("--variant", action="append", choices=["bare", *VARIANTS])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    repos = [r.resolve() for r in (args.repo or [Path(__file__).resolve().parent.parent])]
    chosen = args.variant or ["bare", "observe", "no-DLP"]
    variants = [BARE] if "bare" in chosen else []
    variants += [for_repo(VARIANTS[v], r) for v in chosen if v != "bare" for r in repos]
    rows: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    added: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="failcore-latparts-") as tmp:
        workdir = Path(tmp)
        ctx = BenchContext(workdir, CommandLog(), quick=True)
        with nginx_upstream(workdir, ctx.log) as upstream:
            script = wrk_script(workdir / "wrk.lua", f"127.0.0.1:{upstream.plain_port}", through_proxy=True)
            for round_no in range(args.rounds):
                this_round: dict[str, dict[str, float]] = {}
                for variant in variants:
                    row = measure(ctx, variant, upstream, script, args.seconds)
                    this_round[variant.name] = row
                    rows[variant.name].append(row)
                    print(
                        f"round {round_no + 1} {variant.name}: "
                        + ", ".join(f"{k} {fmt(v)}" for k, v in row.items()),
                        flush=True,
                    )
                if BARE.name in this_round:
                    ref = this_round[BARE.name]
                    for name, row in this_round.items():
                        if name != BARE.name:
                            added[name].append({k: row[k] - ref[k] for k in COLUMNS})
    print("\nmedians over rounds (µs per exchange; vcsw/icsw: context switches of the loop per exchange):")
    print("| variant | " + " | ".join(COLUMNS) + " | load |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for name, samples in rows.items():
        med = [statistics.median(s[k] for s in samples) for k in (*COLUMNS, "load")]
        print(f"| {name} | " + " | ".join(fmt(v) for v in med) + " |")
    if added:
        print("\nadded over bare, paired per round (median of the per-round differences):")
        print("| variant | " + " | ".join(COLUMNS) + " |")
        print("|---" * (len(COLUMNS) + 1) + "|")
        for name, samples in added.items():
            print(
                f"| {name} | "
                + " | ".join(fmt(statistics.median(s[k] for s in samples)) for k in COLUMNS)
                + " |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
