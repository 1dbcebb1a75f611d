"""How much the proxy's genai-prices warm-up stalls the event loop, for failcore checkouts side by side.

    .venv/bin/python benchmarks/warmup_gil.py [--repo /tmp/before] [--repo .] [--rounds 5]

The meter imports genai-prices in a thread once the proxy has been idle for a second (failcore.proxy.
meter._warm_up_prices); the import holds the GIL for 0.3-0.5 s of CPU, and a request arriving then waits.
Each round runs, per checkout, a fresh interpreter (the import happens once per process) in which an
asyncio loop stands in for mitmproxy's: it sleeps 1 ms at a time while the checkout's own
`_warm_up_prices` runs in a thread, and records how late each wake-up is. Reported: the warm-up's wall
time, how often the loop ran meanwhile, and the lateness (p50, p99, largest, summed), medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import asyncio, json, sys, threading, time
from failcore.proxy import meter

async def main():
    late = []
    thread = threading.Thread(target=meter._warm_up_prices)
    started = time.perf_counter()
    thread.start()
    while thread.is_alive():
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        late.append(time.perf_counter() - t0 - 0.001)
    wall = time.perf_counter() - started
    late.sort()
    print(json.dumps({
        "warm-up ms": wall * 1e3,
        "loop ticks": len(late),
        "late p50 ms": late[len(late) // 2] * 1e3,
        "late p99 ms": late[int(len(late) * 0.99)] * 1e3,
        "late max ms": late[-1] * 1e3,
        "late sum ms": sum(late) * 1e3,
    }))

asyncio.run(main())
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repo", type=Path, action="append", help="failcore checkout (repeat)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    repos = [r.resolve() for r in (args.repo or [HERE.parent])]
    rows: dict[str, list[dict[str, float]]] = {str(r): [] for r in repos}
    for round_no in range(args.rounds):
        for repo in repos:
            env = dict(os.environ, PYTHONPATH=str(repo))
            out = subprocess.run(
                [sys.executable, "-c", CHILD], env=env, cwd=repo, capture_output=True, check=True, timeout=120
            )
            row = json.loads(out.stdout.decode().strip().splitlines()[-1])
            row["load"] = os.getloadavg()[0]
            rows[str(repo)].append(row)
            shown = ", ".join(f"{k} {v:.2f}" for k, v in row.items())
            print(f"round {round_no + 1} {repo}: {shown}", flush=True)
    print("\nmedians over rounds (min-max):")
    for repo, samples in rows.items():
        parts = []
        for key in samples[0]:
            values = [s[key] for s in samples]
            parts.append(f"{key} {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        print(f"{repo}: " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
