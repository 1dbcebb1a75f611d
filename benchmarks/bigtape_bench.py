"""`failcore list` and `failcore report` on a big tape: cold and warm index cache, before and after.

    .venv/bin/python benchmarks/bigtape_bench.py [--events 200000] [--tape DIR] [--before PATH]
        [--runs 3] [--report] [--gen-runs 10] [--json]

Generates a tape with benchmarks/gen_tape.py (unless --tape names one), then times, as separate
processes, wall and CPU (user+sys of the child):

- `list` before, cold then warm: `failcore list --json` of the checkout at `--before` (e.g. one made with
  `mkdir /tmp/before && git archive <commit> | tar -x -C /tmp/before`), when given;
- `list` cold: a fresh FAILCORE_HOME, so every segment is counted and its run summaries saved;
- `list` warm: the same FAILCORE_HOME again (sealed segments from the cache, the open one's prefix
  re-hashed, not re-parsed);
- `list` warm + append: after 1000 events are appended to the open segment (of a `--tape` too: give
  it a copy); with --report, `report` of the run they were appended to, warm, then too;
- with --report: `failcore report` of the tape's biggest run with its default bound, and with
  `--max-events 5000` (the bound main had by default until issue 12): before (when --before is given),
  cold (a fresh FAILCORE_HOME: no view index, so the run's aggregates are counted and cached) and warm
  (the aggregates from the cache, only the shown lines parsed); then every page of the same bound must
  be byte-identical but for the generated-at time and the timeline's "showing the first N of M events"
  notice (new in issue 12).

`--gen-runs 1` generates a tape of one big run (issue 12's 250,000-event report).

`--split` adds a cold report made in one child process (collect + render, imports included), before
and after, whose CPU is split into that process's own (its main and verification threads) and its
worker children's (the count workers of a cold report, failcore/report/countworker.py).

Variants are interleaved run by run; numbers are medians with the min-max. The JSON of every `list`
variant is compared and must be identical. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The bound compared before/after: main's default until issue 12 made the default page leaner.
COMPARED_BOUND = 5000
CLI = "import sys; from failcore.cli.main import main; sys.exit(main(sys.argv[1:]))"
# One cold report in this process; prints the CPU of this process and of its (waited-for) children.
SPLIT = """
import json, resource, sys
from pathlib import Path
from failcore.report import collect_report, render_report
render_report(collect_report(Path(sys.argv[1]), sys.argv[2]))
own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps([own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime]))
"""


def timed(argv: list[str], repo: Path, home: Path, raw: bool = False) -> tuple[float, float, bytes]:
    """(wall, CPU of the child and its waited-for children, stdout) of `failcore ARGV` (or, with `raw`,
    of `python ARGV`) run with `repo` first on the path."""
    env = dict(os.environ, PYTHONPATH=str(repo), FAILCORE_HOME=str(home))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    command = [sys.executable, *argv] if raw else [sys.executable, "-c", CLI, *argv]
    done = subprocess.run(command, env=env, cwd=repo, capture_output=True, check=True, timeout=900)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def append_events(tape: Path, count: int) -> None:
    import random

    import orjson

    from failcore.tape.reader import list_segments
    from failcore.tape.writer import encode_line

    sys.path.insert(0, str(HERE))
    from gen_tape import _network_event  # type: ignore[import-not-found]

    segment = list_segments(tape)[-1]
    lines = segment.read_bytes().splitlines()
    last = orjson.loads(lines[-1])
    prev, seq = str(last["h"]).encode("ascii"), last["seq"]
    rng = random.Random(seq)
    with open(segment, "ab") as f:
        for n in range(count):
            seq += 1
            event = _network_event(rng, last.get("run") or "run-appended", seq, 1_800_000_000.0 + n)
            line, prev = encode_line(prev, seq, orjson.dumps(event))
            f.write(line)


def _page(path: Path) -> bytes:
    """A report page without its generated-at time (the one part that differs run to run) and without
    the timeline's "showing the first N of M" notice (which the code before issue 12 did not write)."""
    page = path.read_bytes()
    page = re.sub(rb" generated [^<]*? by failcore ", b" generated - by failcore ", page, count=1)
    return re.sub(rb'<p class="bounded">Showing the first [^\n]*</p>\n', b"", page, count=1)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--tape", type=Path, help="an existing tape (default: generate one)")
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare with")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--gen-runs", type=int, default=10, help="runs of the generated tape")
    parser.add_argument("--report", action="store_true", help="time `report` too")
    parser.add_argument("--split", action="store_true", help="a cold report's own and workers' CPU")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="failcore-bigtape-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the generated tape and the caches


def measure(args: argparse.Namespace, work: Path) -> None:
    load_start = os.getloadavg()[0]
    tape = args.tape
    if tape is None:
        tape = work / "tape"
        subprocess.run(
            [
                sys.executable,
                str(HERE / "gen_tape.py"),
                str(tape),
                "--events",
                str(args.events),
                "--runs",
                str(args.gen_runs),
            ],
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            check=True,
        )
    size = sum(p.stat().st_size for p in tape.glob("seg-*.jsonl"))
    results: dict[str, dict[str, list[float]]] = {}

    def record(name: str, wall: float, cpu: float) -> None:
        entry = results.setdefault(name, {"wall": [], "cpu": []})
        entry["wall"].append(wall)
        entry["cpu"].append(cpu)

    listing = ["list", "--tape", str(tape), "--json"]
    outputs: dict[str, bytes] = {}
    for n in range(args.runs):
        home = work / f"home-{n}"
        if args.before:
            wall, cpu, out = timed(listing, args.before, work / f"before-home-{n}")
            record("list before", wall, cpu)
            outputs["before"] = out
            wall, cpu, out = timed(listing, args.before, work / f"before-home-{n}")
            record("list before warm", wall, cpu)
            outputs["before warm"] = out
        for name in ("list cold", "list warm"):
            wall, cpu, out = timed(listing, REPO, home)
            record(name, wall, cpu)
            outputs[name] = out
    if len({json.dumps(json.loads(o), sort_keys=True) for o in outputs.values()}) != 1:
        raise SystemExit("list outputs differ between variants")

    if args.report:
        runs = json.loads(outputs["list warm"])
        biggest = max(runs, key=lambda r: r["requests"])["run"]
        bound = ["--max-events", str(COMPARED_BOUND)]
        argv = ["report", biggest, "--tape", str(tape), "-o"]
        warm_home = work / "home-report-warm"
        timed([*argv, str(work / "warm-up.html")], REPO, warm_home)  # fills the report's cache
        pages: dict[str, list[Path]] = {"default": [], "bound": []}

        def report(name: str, repo: Path, home: Path, extra: list[str], page: str) -> None:
            out = work / f"r-{name.replace(' ', '-')}.html"
            wall, cpu, _ = timed([*argv, str(out), *extra], repo, home)
            record(name, wall, cpu)
            pages[page].append(out)

        for n in range(args.runs):
            if args.before:
                report("report before", args.before, work / "before-home-report", [], "default")
                report(
                    f"report before --max-events {COMPARED_BOUND}",
                    args.before,
                    work / "before-home-report",
                    bound,
                    "bound",
                )
            report("report cold", REPO, work / f"home-report-cold-{n}", [], "default")
            report("report warm", REPO, warm_home, [], "default")
            report(f"report warm --max-events {COMPARED_BOUND}", REPO, warm_home, bound, "bound")
        for which, paths in pages.items():
            if len({_page(p) for p in paths}) != 1:
                raise SystemExit(
                    f"report pages ({which} bound) differ between variants (beyond the generated-at time)"
                )

    if args.split:
        biggest = max(json.loads(outputs["list warm"]), key=lambda r: r["requests"])["run"]
        for n in range(args.runs):
            for name, repo in (("before", args.before), ("after", REPO)):
                if repo is None:
                    continue
                home = work / f"home-split-{name}-{n}"
                wall, cpu, out = timed(["-c", SPLIT, str(tape), biggest], repo, home, raw=True)
                own, kids = json.loads(out)
                record(f"split {name}: cold report, in all", wall, cpu)
                record(f"split {name}: its own process", wall, own)
                record(f"split {name}: its workers", wall, kids)

    last_run = json.loads(outputs["list warm"])[-1]["run"]  # the run append_events appends to
    appended = ["report", last_run, "--tape", str(tape), "-o", str(work / "r-appended.html")]
    if args.report:
        timed(appended, REPO, work / "home-report-warm")  # its aggregates cached before the append
    append_events(tape, 1000)
    for n in range(args.runs):
        wall, cpu, _ = timed(listing, REPO, work / "home-0")
        record("list warm + 1000 appended" if n == 0 else "list warm (after append)", wall, cpu)
    if args.report:  # the open segment's cached prefix re-hashed, only its new tail read
        for n in range(args.runs):
            wall, cpu, _ = timed(appended, REPO, work / "home-report-warm")
            record("report warm + 1000 appended" if n == 0 else "report warm (after append)", wall, cpu)

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    cpu_model = models[0] if models else "?"
    load = f"{os.getloadavg()[0]:.1f} at the end, {load_start:.1f} at the start"
    if args.json:
        print(json.dumps({"cpu": cpu_model, "load": load, "tape_bytes": size, "results": results}, indent=2))
        return
    print(f"CPU: {cpu_model}; load average {load}")
    print(f"tape: {size / 2**20:.0f} MiB in {len(list(tape.glob('seg-*.jsonl')))} segments")
    print(f"{'variant':32} {'wall s':>20} {'cpu s':>20}")
    for name, entry in results.items():
        print(f"{name:32} {summary(entry['wall']):>20} {summary(entry['cpu']):>20}")


if __name__ == "__main__":
    main()
