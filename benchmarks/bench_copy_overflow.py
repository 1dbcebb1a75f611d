"""The longest event-loop call while a length-less compressed LLM answer passes the meter's copy limit
(failcore.proxy.streamcopy.WholeBodyCopy at the default `failcore_llm_body_max`, 64 MiB): what the copy
kept is weighed by decoding it (up to MAX_DECODED_BYTES). Before: in the one call that passed the limit;
after: a bounded step per chunk, the rest a step per loop turn (`settle`) when the body ends.

The body is fed in 64 KiB chunks from a coroutine that yields to the loop after each, and the copy is
settled when it ends; a ticker task on the same loop records the longest gap between two of its turns
(the longest call the loop made meanwhile). Realistic bodies: the recorded JSON answers of
tests/data/conformance, each compressed frame or gzip member holding them once (ratio as real);
worst case: random bytes (ratio 1, the most decoding per wire byte kept). Interleaved, this tree and
another (`before`), medians of 3.

`python benchmarks/bench_copy_overflow.py /tmp/NAME_before` (a `git archive main` of the other tree)."""

from __future__ import annotations

import asyncio
import gzip
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import brotli

HERE = Path(__file__).resolve().parents[1]
LIMIT = 64 << 20
CHUNK = 64 * 1024


def _load(tree: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, tree / "failcore/proxy/streamcopy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _longest_loop_call(module: ModuleType, coding: str, wire: bytes) -> tuple[float, int]:
    gaps: list[float] = []
    done = False

    async def tick() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    copy = module.WholeBodyCopy(LIMIT, coding)
    for start in range(0, len(wire), CHUNK):
        copy(wire[start : start + CHUNK])
        await asyncio.sleep(0)
    settle = getattr(copy, "settle", None)
    if settle is not None:
        await settle()
    size = copy.size
    done = True
    await ticker
    return max(gaps), size


def _bodies() -> dict[str, tuple[str, bytes]]:
    sys.path.insert(0, str(HERE))
    from failcore.compat import zstd
    from tests.llm_replay import load_exchanges

    unit = b"\n".join(
        e["response_body"].encode()
        for e in load_exchanges()
        if "json" in (e["response_headers"].get("content-type") or "")
    )
    member, frame = gzip.compress(unit, 6), zstd.compress(unit)
    noise = os.urandom(LIMIT + (2 << 20))
    return {
        f"gzip realistic (x{len(unit) / len(member):.1f})": ("gzip", member * (LIMIT // len(member) + 2)),
        f"zstd realistic (x{len(unit) / len(frame):.1f})": ("zstd", frame * (LIMIT // len(frame) + 2)),
        "gzip random (x1)": ("gzip", gzip.compress(noise, 1)),
        "br random (x1)": ("br", brotli.compress(noise, quality=0)),
        "zstd random (x1)": ("zstd", zstd.compress(noise)),
    }


def main() -> None:
    trees = {
        "before": _load(Path(sys.argv[1]), "before_streamcopy"),
        "after": _load(HERE, "after_streamcopy"),
    }
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?")
    print(f"CPU {model}, {os.cpu_count()} cores, load average {os.getloadavg()}")
    for label, (coding, wire) in _bodies().items():
        runs: dict[str, list[float]] = {name: [] for name in trees}
        sizes: dict[str, int] = {}
        for _ in range(3):
            for name, module in trees.items():
                longest, sizes[name] = asyncio.run(_longest_loop_call(module, coding, wire))
                runs[name].append(longest * 1e3)
        before, after = statistics.median(runs["before"]), statistics.median(runs["after"])
        assert sizes["before"] == sizes["after"], sizes  # the same weight charged
        print(
            f"{label:26} wire {len(wire) >> 20} MiB, weighed {sizes['after'] >> 20} MiB: longest loop call "
            f"before {before:.1f} ms, after {after:.1f} ms (x{before / after:.0f} shorter)"
        )
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
