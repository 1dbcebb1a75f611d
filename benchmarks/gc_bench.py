"""Garbage collection in the proxy process, per exchange, for failcore checkouts side by side.

    .venv/bin/python benchmarks/gc_bench.py [--repo /tmp/before] [--repo .] [--rounds 3] [--seconds 5]
        [--set 'LABEL:opt=value[,opt=value]']   (an extra variant of the last --repo, observe and enforce;
                                                 an item env.VAR=value sets an environment variable)

Each mitmdump also loads benchmarks/gcprobe.py (an extra `-s`, never part of failcore), which counts the
collections per thread and generation. For each round, each variant (bare, failcore observe, failcore
enforce, per checkout and per --set) gets a fresh mitmdump, the plain-HTTP load (wrk, 8 connections,
1 KB JSON POST) and then the latency load (1 connection). Reported per exchange of the 8-connection
load: collections and the collecting thread's CPU µs by generation (and how many ran outside the event
loop's thread), the CPU µs of the event loop's thread and of the whole process and its children, the
loop's voluntary context switches (GIL waits), requests/s; then p50/p99 with one connection, RSS
(mitmdump and children) after the load, objects frozen and tracked by the collector. Interleaved:
checkouts and variants alternate within each round.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import CommandLog, print_medians, print_round, tree_rss_mib
from benchmarks.loadgen import wrk_for, wrk_script
from benchmarks.proxy_threads import children_cpu_seconds, for_repo, settle, thread_stats
from benchmarks.servers import BenchContext, nginx_upstream, running_proxy
from benchmarks.variants import BARE, ENFORCE, OBSERVE, Variant

PROBE = Path(__file__).resolve().parent / "gcprobe.py"


def with_probe(variant: Variant, out: Path) -> Variant:
    return dataclasses.replace(
        variant,
        extra=(*variant.extra, "-s", str(PROBE)),
        env=(*variant.env, ("FAILCORE_GCPROBE_OUT", str(out))),
    )


def probe_snapshot(pid: int, out: Path, timeout: float = 10.0) -> dict:
    """Ask the probe for its totals (SIGUSR1) and read the line it appends."""
    lines = out.read_text().splitlines() if out.exists() else []
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = out.read_text().splitlines() if out.exists() else []
        if len(now) > len(lines) and now[-1].endswith("}"):
            return json.loads(now[-1])
    raise TimeoutError("the GC probe did not answer")


def gc_delta(before: dict, after: dict, n: int) -> dict[str, float]:
    """Per exchange: collections and thread-CPU µs per generation, and how many ran off the loop."""
    old = {(t, g): v for t, g, *v in before["collections"]}
    row: dict[str, float] = collections.defaultdict(float)
    for thread, gen, count, wall, cpu, collected in after["collections"]:
        b = old.get((thread, gen), [0, 0, 0, 0])
        row[f"gc{gen} n"] += (count - b[0]) / n
        row[f"gc{gen} µs"] += (cpu - b[2]) / 1e3 / n
        row[f"gc{gen} wall µs"] += (wall - b[1]) / 1e3 / n
        row[f"gc{gen} collected"] += (collected - b[3]) / n
        if thread != "loop":
            row["gc off-loop n"] += (count - b[0]) / n
    row["gc µs"] = sum(row[f"gc{g} µs"] for g in range(3))
    for thread, gen, ns in after["longest"]:
        if thread == "loop":
            row[f"gc{gen} longest ms"] = max(row[f"gc{gen} longest ms"], ns / 1e6)
    return dict(row)


def life(out: Path) -> dict[str, float]:
    """From the probe's last line (written as mitmdump stops): collections over the proxy's life,
    start-up included, and the full collections' total CPU ms."""
    last = json.loads(out.read_text().splitlines()[-1])
    row: dict[str, float] = collections.defaultdict(float)
    for _thread, gen, count, _wall, cpu, _collected in last["collections"]:
        row[f"life gc{gen} n"] += count
        row[f"life gc{gen} ms"] += cpu / 1e6
    return dict(row)


def parse_set(spec: str) -> tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]]:
    """LABEL:opt=value,env.VAR=value -> (label, mitmproxy --set items, environment)."""
    label, _, sets = spec.partition(":")
    if not label or not sets:
        raise SystemExit(f"--set wants LABEL:opt=value[,opt=value], not {spec!r}")
    items = [s.strip() for s in sets.split(",") if s.strip()]
    env = tuple(tuple(i[4:].split("=", 1)) for i in items if i.startswith("env."))
    return label, tuple(i for i in items if not i.startswith("env.")), env  # type: ignore[return-value]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--repo", type=Path, action="append", help="failcore checkout (repeat); default: this one"
    )
    parser.add_argument("--set", dest="sets", action="append", default=[], help="LABEL:opt=value[,opt=value]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-enforce", action="store_true", help="failcore observe only")
    parser.add_argument("--enforce-only", action="store_true", help="failcore enforce only")
    args = parser.parse_args(argv)
    repos = [r.resolve() for r in (args.repo or [Path(__file__).resolve().parent.parent])]
    kinds = (OBSERVE,) if args.no_enforce else (ENFORCE,) if args.enforce_only else (OBSERVE, ENFORCE)
    runs: list[tuple[str, Variant, tuple[str, ...]]] = [("bare", BARE, ())]
    for kind in kinds:
        for repo in repos:
            v = for_repo(kind, repo)
            runs.append((v.name, v, ()))
        for label, sets, env in map(parse_set, args.sets):
            v = for_repo(kind, repos[-1])
            v = dataclasses.replace(v, env=(*v.env, *env))
            runs.append((f"{v.name} {label}", v, sets))
    rows: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="failcore-gc-") as tmp:
        workdir = Path(tmp)
        ctx = BenchContext(workdir, CommandLog(), quick=True)
        with nginx_upstream(workdir, ctx.log) as upstream:
            script = wrk_script(workdir / "wrk.lua", f"127.0.0.1:{upstream.plain_port}", through_proxy=True)
            for round_no in range(args.rounds):
                for index, (name, variant, sets) in enumerate(runs):
                    out = workdir / f"gc-{round_no}-{index}.jsonl"
                    with running_proxy(ctx, with_probe(variant, out), upstream, sets) as proxy:
                        address = f"127.0.0.1:{proxy.port}"
                        settle(proxy.pid)
                        wrk_for(address, script, connections=8, seconds=1, log=ctx.log, label="warm-up")
                        settle(proxy.pid)
                        snap0 = probe_snapshot(proxy.pid, out)
                        before, kids0 = thread_stats(proxy.pid), children_cpu_seconds(proxy.pid)
                        result = wrk_for(
                            address, script, connections=8, seconds=args.seconds, log=ctx.log, label="load"
                        )
                        after, kids1 = thread_stats(proxy.pid), children_cpu_seconds(proxy.pid)
                        snap1 = probe_snapshot(proxy.pid, out)
                        n = max(result.requests, 1)
                        row: dict[str, float] = {"rps": result.rps, "load": os.getloadavg()[0]}
                        row["RSS MiB"] = tree_rss_mib(proxy.pid)
                        process = 0.0
                        for thread, (cpu, vol, _invol) in after.items():
                            b = before.get(thread, (0.0, 0, 0))
                            process += cpu - b[0]
                            if thread == "loop":
                                row["loop µs"] = (cpu - b[0]) / n * 1e6
                                row["loop vcsw"] = (vol - b[1]) / n
                        row["process+children µs"] = (process + max(kids1 - kids0, 0.0)) / n * 1e6
                        row.update(gc_delta(snap0, snap1, n))
                        lat = wrk_for(
                            address, script, connections=1, seconds=args.seconds, log=ctx.log, label="latency"
                        )
                        row["p50 µs"] = lat.p50_us
                        row["p99 µs"] = lat.p99_us
                        row["frozen"] = snap1["frozen"]
                        row["tracked"] = snap1["tracked"]
                        types = ", ".join(f"{name} {count}" for name, count in snap1["types"])
                        print(f"  {name}: tracked after the load, most common: {types}", flush=True)
                    row.update(life(out))
                    rows[name].append(row)
                    print_round(f"round {round_no + 1} {name}", row, 3)
    print_medians(rows, 3)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
