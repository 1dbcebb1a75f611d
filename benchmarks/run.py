"""What failcore costs an agent, side by side with bare mitmproxy. Regenerates BENCHMARKS.md.

    .venv/bin/python benchmarks/run.py [--quick] [--only NAME ...] [--output BENCHMARKS.md]

Needs nginx (Debian: nginx-light), wrk and curl on PATH. Run it on an otherwise idle machine: all
variants of a comparison run in this one invocation, interleaved round by round, but the numbers still
reflect whatever else the CPU is doing.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import bench_bounds, bench_offline, bench_proxy, bench_sse
from benchmarks.harness import REPO, CommandLog
from benchmarks.report import Section, render
from benchmarks.servers import BenchContext, Upstream, nginx_upstream

ProxySection = Callable[[BenchContext, Upstream, int], Section]
OfflineSection = Callable[[BenchContext, int], Section]

PROXY_SECTIONS: dict[str, ProxySection] = {
    "throughput": bench_proxy.run_throughput,
    "https": bench_proxy.run_https,
    "latency": bench_proxy.run_latency,
    "sse": bench_sse.run_sse,
    "memory": bench_proxy.run_memory,
}
OFFLINE_SECTIONS: dict[str, OfflineSection] = {
    "dlp": bench_offline.run_dlp,
    "tape": bench_offline.run_tape,
    "bounds": bench_bounds.run_bounds,
}
ORDER = ("throughput", "https", "latency", "sse", "dlp", "tape", "memory", "bounds")
MEMORY_ROUNDS = 2  # each round is 2 × 100k exchanges in full mode


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 rounds, short runs: a smoke test, not a result"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=ORDER,
        metavar="NAME",
        help=f"run only this section (repeatable): {', '.join(ORDER)}",
    )
    parser.add_argument(
        "--rounds", type=int, help="override the number of interleaved rounds (default 5; 2 quick)"
    )
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    return parser.parse_args(argv)


# Everything after this line in the output file is written by hand (or by the other benchmark scripts)
# and kept when run.py regenerates the sections above it.
KEEP_MARKER = "<!-- Hand-added sections below: benchmarks/run.py keeps them when it rewrites this file. -->"


def kept_sections(output: Path) -> str:
    """The marker and what follows it in the existing output file ("" when there is none)."""
    try:
        text = output.read_text()
    except FileNotFoundError:
        return ""
    at = text.find(KEEP_MARKER)
    return "" if at < 0 else "\n" + text[at:]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    missing = [tool for tool in ("wrk", "curl") if shutil.which(tool) is None]
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        missing.append("nginx")
    if missing:
        print(
            f"missing tools: {', '.join(missing)} (Debian: apt-get install nginx-light wrk curl)",
            file=sys.stderr,
        )
        return 2
    rounds = args.rounds or (2 if args.quick else 5)
    selected = [name for name in ORDER if not args.only or name in args.only]
    command = (
        ".venv/bin/python benchmarks/run.py " + shlex.join(argv)
        if argv
        else ".venv/bin/python benchmarks/run.py"
    )
    started_wall = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    started = time.perf_counter()
    log = CommandLog()
    sections: list[Section] = []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="failcore-bench-")))
        ctx = BenchContext(workdir, log, args.quick)
        upstream: Upstream | None = None
        for name in selected:
            print(f"== {name}", flush=True)
            if name in OFFLINE_SECTIONS:
                sections.append(OFFLINE_SECTIONS[name](ctx, rounds))
            else:
                if upstream is None:
                    upstream = stack.enter_context(nginx_upstream(workdir, log))
                section_rounds = min(rounds, MEMORY_ROUNDS) if name == "memory" else rounds
                sections.append(PROXY_SECTIONS[name](ctx, upstream, section_rounds))
            for target in sections[-1].targets:
                print(
                    f"   {target.verdict}: {target.what}: {target.measured} (goal {target.goal})", flush=True
                )
    report = render(sections, log, command, args.quick, started_wall, time.perf_counter() - started, rounds)
    args.output.write_text(report + "\n" + kept_sections(args.output))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
