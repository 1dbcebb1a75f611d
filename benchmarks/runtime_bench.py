"""What the runtime API (`failcore.run` / `failcore.guard`) costs a Python agent.

    .venv/bin/python benchmarks/runtime_bench.py [--calls 5000] [--repeats 7] [--json]

(a) a guarded no-op tool call inside `run()` (own tape) against the same plain call: the difference is
    what guard() adds per call (goal: <= 20 us). Building the masked event happens on the tape writer's
    thread; its CPU is not in this number (on a loaded single core it competes with the agent).
(b) a guarded call that opens one file: the cost of one audit-hook effect (fs event + policy check).
(c) the audit hook outside guarded calls: a loop of open()/close() and of os.stat() in a fresh
    interpreter without the hook, and in one with the hook installed (`run()` open, no guarded call
    running). Hooks cannot be removed, hence one subprocess per variant.

Per-call times are CPU time of the calling thread (time.thread_time), medians over `--repeats`
batches of `--calls` calls (min-max in parentheses); the tape writer's CPU is reported apart. Run it on
an otherwise idle machine: a loaded one inflates even CPU time (GIL hand-offs, caches).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def per_call_us(fn, calls: int, repeats: int, between=None) -> list[float]:  # type: ignore[no-untyped-def]
    """CPU time of the calling thread per call (time.thread_time): on a shared machine wall time mostly
    measures waiting for a core."""
    out = []
    for _ in range(repeats):
        started = time.thread_time()
        for _ in range(calls):
            fn()
        out.append((time.thread_time() - started) / calls * 1e6)
        if between is not None:
            between()
    return out


def writer_cpu_us(fn, calls: int, repeats: int, flush) -> list[float]:  # type: ignore[no-untyped-def]
    """CPU time of the other threads (the tape writer building and writing the events) per call."""
    out = []
    for _ in range(repeats):
        process, thread = time.process_time(), time.thread_time()
        for _ in range(calls):
            fn()
        flush()
        out.append(((time.process_time() - process) - (time.thread_time() - thread)) / calls * 1e6)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(samples), 3),
        "min": round(min(samples), 3),
        "max": round(max(samples), 3),
    }


def bench_guard(calls: int, repeats: int) -> dict[str, dict[str, float]]:
    sys.path.insert(0, str(REPO))
    from failcore import guard, run

    def noop() -> None:
        return None

    def open_one() -> None:
        with open(probe, "rb"):
            pass

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FAILCORE_HOME"] = str(Path(tmp) / "home")
        for name in ("FAILCORE_EVENTS", "FAILCORE_EVENTS_TOKEN"):
            os.environ.pop(name, None)
        probe = Path(tmp) / "probe.txt"
        probe.write_text("x")
        plain = per_call_us(noop, calls, repeats)
        plain_open = per_call_us(open_one, calls, repeats)
        with run(tape=Path(tmp) / "tape") as ctx:
            from failcore.dlp.pending import wait_until_built

            scanner = ctx._state.rules.current().scanner  # type: ignore[union-attr]
            if scanner is not None:
                wait_until_built(scanner.engine)  # its background compile would compete for the GIL
            flush = ctx._sink.writer.flush  # type: ignore[union-attr]
            guarded = per_call_us(guard(noop), calls, repeats, flush)
            guarded_open = per_call_us(guard(open_one), calls, repeats, flush)
            writer = writer_cpu_us(guard(noop), calls, repeats, flush)
            dropped = ctx.dropped
    return {
        "plain_noop_us": summary(plain),
        "guarded_noop_us": summary(guarded),
        "guard_added_us": summary([g - p for g, p in zip(sorted(guarded), sorted(plain), strict=True)]),
        "plain_open_us": summary(plain_open),
        "guarded_open_us": summary(guarded_open),
        "effect_added_us": summary(
            [
                (go - po) - (g - p)
                for go, po, g, p in zip(
                    sorted(guarded_open), sorted(plain_open), sorted(guarded), sorted(plain), strict=True
                )
            ]
        ),
        "writer_cpu_per_tool_event_us": summary(writer),
        "dropped_events": {"median": dropped, "min": dropped, "max": dropped},
    }


HOOK_LOOP = textwrap.dedent(
    """
    import json, os, sys, tempfile, time
    from pathlib import Path
    calls, repeats, hooked = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    tmp = tempfile.mkdtemp()
    os.environ["FAILCORE_HOME"] = os.path.join(tmp, "home")
    probe = os.path.join(tmp, "probe.txt")
    Path(probe).write_text("x")
    if hooked:
        from failcore import run
        ctx = run(tape=os.path.join(tmp, "tape")).__enter__()
    out = {"open": [], "stat": []}
    for _ in range(repeats):
        t = time.thread_time()
        for _ in range(calls):
            open(probe, "rb").close()
        out["open"].append((time.thread_time() - t) / calls * 1e6)
        t = time.thread_time()
        for _ in range(calls):
            os.stat(probe)
        out["stat"].append((time.thread_time() - t) / calls * 1e6)
    if hooked:
        out["events"] = ctx.events
        ctx.__exit__(None, None, None)
    print(json.dumps(out))
    """
)


def bench_hook(calls: int, repeats: int) -> dict[str, dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FAILCORE_EVENTS", None)
    runs = {}
    for hooked in ("0", "1"):
        result = subprocess.run(
            [sys.executable, "-c", HOOK_LOOP, str(calls * 4), str(repeats), hooked],
            capture_output=True, text=True, check=True, env=env,
        )  # fmt: skip
        runs[hooked] = json.loads(result.stdout)
    assert runs["1"]["events"] == 0, "the hook recorded operations outside any guarded call"
    return {
        "open_close_without_hook_us": summary(runs["0"]["open"]),
        "open_close_with_hook_us": summary(runs["1"]["open"]),
        "stat_without_hook_us": summary(runs["0"]["stat"]),
        "stat_with_hook_us": summary(runs["1"]["stat"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "calls": args.calls,
        "repeats": args.repeats,
        **bench_guard(args.calls, args.repeats),
        **bench_hook(args.calls, args.repeats),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"CPU: {results['cpu']}  Python {results['python']}  ({args.repeats} x {args.calls} calls)")
    for key, value in results.items():
        if isinstance(value, dict):
            print(f"  {key:30} {value['median']:>9.3f}  ({value['min']:.3f}-{value['max']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
