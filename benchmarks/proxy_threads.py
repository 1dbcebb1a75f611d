"""Where a proxy's CPU goes per exchange, thread by thread, for failcore checkouts side by side.

    .venv/bin/python benchmarks/proxy_threads.py [--repo /tmp/before] [--repo .] [--rounds 3] [--seconds 5]
        [--variant observe --variant no-DLP --variant enforce --variant enforce-parts]

For each round, each variant (bare; failcore observe and no-DLP, or the `--variant`s) and each checkout,
one fresh mitmdump serves the plain-HTTP throughput load (wrk, 8 connections, 1 KB JSON POST) and then
the latency load (1 connection); per exchange it reports the CPU (user+system µs) of every thread of the
mitmdump process (the event loop, the tape writer, …) and of its children (the DLP evidence worker), the
context switches of the event loop's thread, the p50 with one connection, the RSS (mitmdump and its
children) after the load and the machine's 1-minute load average. Interleaved: checkouts and variants
alternate within each round, so a busy machine slows all of them alike.

`enforce-parts` takes the enforce variant's policy apart, one part less at a time: enforce with
`fail_open: true`, then also without the budgets, then also with DLP that cannot BLOCK (no blocking
request scan; DLP evidence as before): the steps between them are what `fail_open: false` (its 20 ms
tape batches), the budgets and the blocking scan cost.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import CommandLog, children_of, cpu_seconds, print_medians, print_round, tree_rss_mib
from benchmarks.loadgen import wrk_for, wrk_script
from benchmarks.servers import BenchContext, enforce_policy_text, nginx_upstream, running_proxy
from benchmarks.variants import BARE, ENFORCE, OBSERVE, OBSERVE_NO_DLP, Variant

TICK = 100.0  # os.sysconf("SC_CLK_TCK") on Linux


def thread_stats(pid: int) -> dict[str, tuple[float, int, int]]:
    """name -> (CPU seconds, voluntary, involuntary context switches), summed over threads of that name."""
    out: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0, 0])
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if task.name == str(pid):
            name = "loop"
        elif name.startswith("tape-writer"):
            name = "tape-writer"
        entry = out[name]
        entry[0] += (int(fields[11]) + int(fields[12])) / TICK
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                entry[1] += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                entry[2] += int(line.split()[1])
    return {k: (v[0], int(v[1]), int(v[2])) for k, v in out.items()}


def children_cpu_seconds(pid: int) -> float:
    total = 0.0
    for child in children_of(pid):
        try:
            total += cpu_seconds(child)
        except (OSError, ValueError):
            continue
    return total


def settle(pid: int, timeout: float = 60.0) -> None:
    """Wait until the proxy is idle: its start-up (addon load, DLP rules, certificates) is finished and
    not counted in the measured run."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid) + children_cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid) + children_cpu_seconds(pid)
        if now - last < 0.02:
            return
        last = now


def for_repo(variant: Variant, repo: Path) -> Variant:
    extra = tuple(str(repo / "addons" / "failcore_addon.py") if a == "{addon}" else a for a in variant.extra)
    return dataclasses.replace(
        variant,
        name=f"{variant.name} [{repo.name}]",
        extra=extra,
        env=(*variant.env, ("PYTHONPATH", str(repo))),
    )


_VARIANTS = {"observe": OBSERVE, "no-DLP": OBSERVE_NO_DLP, "enforce": ENFORCE}
# enforce-parts: (name, enforce_policy_text's keywords), each one part less than the one before.
_ENFORCE_PARTS = (
    ("enforce, fail_open: true", {"fail_open": True}),
    ("enforce, fail_open: true, no budgets", {"fail_open": True, "budgets": False}),
    (
        "enforce, fail_open: true, no budgets, DLP cannot BLOCK",
        {"fail_open": True, "budgets": False, "dlp_block": False},
    ),
)


def enforce_parts(workdir: Path) -> list[Variant]:
    """ENFORCE and its policy with one part less at a time (see the module docstring)."""
    variants = [ENFORCE]
    for index, (name, parts) in enumerate(_ENFORCE_PARTS):
        policy = workdir / f"enforce-part-{index}.yaml"
        policy.write_text(enforce_policy_text(**parts))
        extra = ("-s", "{addon}", "--set", f"failcore_policy={policy}")
        variants.append(dataclasses.replace(ENFORCE, name=name, description=name, extra=extra))
    return variants


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--repo", type=Path, action="append", help="failcore checkout (repeat); default: this one"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument(
        "--variant",
        action="append",
        choices=[*sorted(_VARIANTS), "enforce-parts"],
        help="failcore variants to run (repeat; default: observe and no-DLP)",
    )
    args = parser.parse_args(argv)
    repos = [r.resolve() for r in (args.repo or [Path(__file__).resolve().parent.parent])]
    rows: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="failcore-threads-") as tmp:
        workdir = Path(tmp)
        chosen: list[Variant] = []
        for name in args.variant or ["observe", "no-DLP"]:
            chosen += enforce_parts(workdir) if name == "enforce-parts" else [_VARIANTS[name]]
        variants = [BARE] + [for_repo(v, r) for v in chosen for r in repos]
        ctx = BenchContext(workdir, CommandLog(), quick=True)
        with nginx_upstream(workdir, ctx.log) as upstream:
            script = wrk_script(workdir / "wrk.lua", f"127.0.0.1:{upstream.plain_port}", through_proxy=True)
            for round_no in range(args.rounds):
                for variant in variants:
                    with running_proxy(ctx, variant, upstream) as proxy:
                        address = f"127.0.0.1:{proxy.port}"
                        settle(proxy.pid)
                        wrk_for(address, script, connections=8, seconds=1, log=ctx.log, label="warm-up")
                        settle(proxy.pid)
                        before, kids0 = thread_stats(proxy.pid), children_cpu_seconds(proxy.pid)
                        result = wrk_for(
                            address, script, connections=8, seconds=args.seconds, log=ctx.log, label="load"
                        )
                        after, kids1 = thread_stats(proxy.pid), children_cpu_seconds(proxy.pid)
                        n = max(result.requests, 1)
                        row: dict[str, float] = {"rps": result.rps, "load": os.getloadavg()[0]}
                        row["RSS MiB"] = tree_rss_mib(proxy.pid)
                        for name, (cpu, vol, invol) in after.items():
                            b = before.get(name, (0.0, 0, 0))
                            row[f"{name} µs"] = (cpu - b[0]) / n * 1e6
                            if name in ("loop", "tape-writer"):
                                row[f"{name} vcsw"] = (vol - b[1]) / n
                                row[f"{name} icsw"] = (invol - b[2]) / n
                        row["process µs"] = sum(v for k, v in row.items() if k.endswith(" µs"))
                        row["worker µs"] = max(kids1 - kids0, 0.0) / n * 1e6
                        if not args.no_latency:
                            lat = wrk_for(
                                address,
                                script,
                                connections=1,
                                seconds=args.seconds,
                                log=ctx.log,
                                label="latency",
                            )
                            row["p50 µs (1 conn)"] = lat.p50_us
                        rows[variant.name].append(row)
                        print_round(f"round {round_no + 1} {variant.name}", row, 2)
    print_medians(rows, 2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
