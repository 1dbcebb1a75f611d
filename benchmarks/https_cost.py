"""CPU per HTTPS exchange (CONNECT + TLS interception), thread by thread, for failcore checkouts side by side.

    .venv/bin/python benchmarks/https_cost.py [--repo /tmp/before] [--repo .] [--rounds 3] [--requests 1000]
        [--variant bare --variant "failcore no-DLP" --variant "failcore observe" ...] [--connections 8]
        [--probe] [--plain SECONDS]

The load is the https section's (benchmarks/run.py --only https): curl --parallel, HTTP/1.1 POSTs of a
1 KB JSON body over kept-alive CONNECT tunnels to nginx (TLS, a self-signed certificate mitmproxy
verifies). For each round, each variant and each checkout, one fresh mitmdump gets a 200-request warm-up,
is left to go idle, then serves the measured requests; per exchange it reports the CPU (user+system µs)
of every thread of the mitmdump process (the event loop, the tape writer, …) and of its children (the
DLP evidence worker), requests/s and its ratio to bare mitmdump's in the same round, the TLS connections
curl opened, the voluntary and involuntary context switches of each thread per exchange (`vcsw`,
`icsw`: a thread that waits for the GIL sleeps), the RSS after the load and the machine's 1-minute
load average. Interleaved: checkouts and variants alternate within each round, so a busy machine slows
all of them alike.

`--probe` also loads benchmarks/hookprobe.py into each failcore mitmdump: the thread CPU of every hook
failcore answers (`hook:NAME`, per exchange, with its calls per exchange) and of the evidence backlog's
build, so the CPU failcore spends in its own code is told apart from what mitmproxy spends around it.
`--close` makes every request ask `Connection: close`: each exchange then opens its own CONNECT tunnel
and both TLS connections (client and upstream), which is where per-connection costs show.
`--plain SECONDS` drives the plain-HTTP throughput load instead (wrk, absolute-URI POSTs, same bodies),
for the same comparison without TLS.
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
from benchmarks.loadgen import curl_https, wrk_for, wrk_script
from benchmarks.proxy_threads import children_cpu_seconds, for_repo, settle, thread_stats
from benchmarks.servers import BenchContext, nginx_upstream, running_proxy
from benchmarks.variants import BARE, VARIANTS, Variant

DEFAULT_VARIANTS = ("bare", "failcore no-DLP", "failcore observe")
WARM_UP = 200
PROBE = Path(__file__).resolve().parent / "hookprobe.py"


def with_probe(variant: Variant, out: Path, by_concern: bool = False) -> Variant:
    env = (
        ("FAILCORE_HOOKPROBE_OUT", str(out)),
        ("FAILCORE_HOOKPROBE_BY_CONCERN", "1" if by_concern else "0"),
    )
    return dataclasses.replace(variant, extra=(*variant.extra, "-s", str(PROBE)), env=(*variant.env, *env))


def probe_snapshot(pid: int, out: Path, timeout: float = 10.0) -> dict[str, list[int]]:
    """Ask the probe for its totals (SIGUSR1) and read the line it appends."""
    lines = out.read_text().splitlines() if out.exists() else []
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = out.read_text().splitlines() if out.exists() else []
        if len(now) > len(lines) and now[-1].endswith("}"):
            return json.loads(now[-1])["totals"]
    raise TimeoutError("the hook probe did not answer")


def probe_delta(before: dict[str, list[int]], after: dict[str, list[int]], n: int) -> dict[str, float]:
    row: dict[str, float] = {}
    total = 0.0
    for name, (calls, ns) in after.items():
        calls0, ns0 = before.get(name, [0, 0])
        if calls == calls0:
            continue
        row[f"hook:{name} µs"] = (ns - ns0) / 1e3 / n
        row[f"hook:{name} calls"] = (calls - calls0) / n
        if "." not in name or name == "EvidenceBacklog.build":  # (`Concern.hook` is inside `hook`)
            total += (ns - ns0) / 1e3 / n
    row["hooks µs"] = total
    return row


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--repo", type=Path, action="append", help="failcore checkout (repeat); default: this one"
    )
    parser.add_argument(
        "--variant",
        action="append",
        choices=[v.name for v in VARIANTS if not v.direct],
        help=f"repeat; default: {', '.join(DEFAULT_VARIANTS)}",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--probe", action="store_true", help="time failcore's hooks (benchmarks/hookprobe.py)"
    )
    parser.add_argument(
        "--close", action="store_true", help="Connection: close: a new tunnel and TLS handshakes per exchange"
    )
    parser.add_argument("--by-concern", action="store_true", help="with --probe: each concern's hooks too")
    parser.add_argument(
        "--plain", type=float, metavar="SECONDS", help="the plain-HTTP load instead, this long"
    )
    args = parser.parse_args(argv)
    repos = [r.resolve() for r in (args.repo or [Path(__file__).resolve().parent.parent])]
    chosen = [next(v for v in VARIANTS if v.name == name) for name in (args.variant or DEFAULT_VARIANTS)]
    runs: list[Variant] = []
    for variant in chosen:
        runs += [for_repo(variant, r) for r in repos] if variant.failcore else [variant]
    if BARE not in runs:
        runs.insert(0, BARE)
    rows: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="failcore-https-") as tmp:
        workdir = Path(tmp)
        ctx = BenchContext(workdir, CommandLog(), quick=True)
        with nginx_upstream(workdir, ctx.log) as upstream:
            url = upstream.url(tls=True)
            script = wrk_script(workdir / "wrk.lua", f"127.0.0.1:{upstream.plain_port}", through_proxy=True)
            for round_no in range(args.rounds):
                bare_rps = 0.0
                for index, variant in enumerate(runs):
                    out = workdir / f"probe-{round_no}-{index}.jsonl"
                    probed = args.probe and variant.failcore
                    with running_proxy(
                        ctx, with_probe(variant, out, args.by_concern) if probed else variant, upstream
                    ) as proxy:
                        settle(proxy.pid)

                        def load(requests: int, label: str, p=proxy) -> tuple[float, int, int, int]:
                            """(requests/s, exchanges, failures, TLS connections)"""
                            if args.plain:
                                r = wrk_for(
                                    f"127.0.0.1:{p.port}",
                                    script,
                                    connections=args.connections,
                                    seconds=args.plain if requests > WARM_UP else 1,
                                    log=ctx.log,
                                    label=label,
                                )
                                return r.rps, r.requests, r.errors, 0
                            c = curl_https(
                                workdir,
                                url,
                                requests=requests,
                                parallel=args.connections,
                                proxy=p.url,
                                cacert=p.ca_cert,
                                log=ctx.log,
                                label=label,
                                close=args.close,
                            )
                            return c.rps, c.requests - c.failures, c.failures, c.connections

                        warm = load(WARM_UP, "warm-up")
                        settle(proxy.pid)
                        probe0 = probe_snapshot(proxy.pid, out) if probed else {}
                        before, kids0 = thread_stats(proxy.pid), children_cpu_seconds(proxy.pid)
                        rps, done, failures, conns = load(args.requests, "load")
                        after, kids1 = thread_stats(proxy.pid), children_cpu_seconds(proxy.pid)
                        probe1 = probe_snapshot(proxy.pid, out) if probed else {}
                        n = max(done, 1)
                        row: dict[str, float] = {"rps": rps, "load": os.getloadavg()[0]}
                        if variant is BARE:
                            bare_rps = rps
                        elif bare_rps:
                            row["× bare"] = rps / bare_rps
                        row["failures"] = failures
                        row["TLS conns"] = conns
                        row["RSS MiB"] = tree_rss_mib(proxy.pid)
                        if probed:
                            row.update(probe_delta(probe0, probe1, n))
                        process = 0.0
                        for name, (cpu, vol, invol) in after.items():
                            b = before.get(name, (0.0, 0, 0))
                            process += cpu - b[0]
                            row[f"{name} µs"] = (cpu - b[0]) / n * 1e6
                            row[f"{name} vcsw"] = (vol - b[1]) / n
                            row[f"{name} icsw"] = (invol - b[2]) / n
                        row["process µs"] = process / n * 1e6
                        row["worker µs"] = max(kids1 - kids0, 0.0) / n * 1e6
                    if variant.failcore:
                        expected = warm[1] + n
                        recorded = proxy.recorded_network_events()
                        if recorded < expected or proxy.internal_errors():
                            print(
                                f"  note: {variant.name}: {recorded} network events for {expected} "
                                f"exchanges, {proxy.internal_errors()} internal_error lines",
                                flush=True,
                            )
                    proxy.cleanup()
                    rows[variant.name].append(row)
                    print_round(f"round {round_no + 1} {variant.name}", row, 2)
    print_medians(rows, 2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
