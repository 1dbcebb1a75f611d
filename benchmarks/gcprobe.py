"""A benchmark-only mitmproxy script that counts the proxy process's garbage collections.

    mitmdump -s addons/failcore_addon.py -s benchmarks/gcprobe.py   (FAILCORE_GCPROBE_OUT=FILE)

It installs a `gc.callbacks` hook that adds up, per thread and per generation, how many collections ran,
their wall time and the collecting thread's CPU time (`time.thread_time_ns`: what the collection itself
cost, without the time the OS gave other tasks meanwhile). On SIGUSR1 it appends one JSON line with
the totals so far to FAILCORE_GCPROBE_OUT, so a harness takes a snapshot before and after a load and
subtracts; the line also holds the longest collection since the last line, the GC thresholds, the
frozen-object count and the number of objects the collector tracks. Never part of failcore:
benchmarks/gc_bench.py loads it with an extra `-s`.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import signal
import threading
import time
from typing import Any

OUT = os.environ.get("FAILCORE_GCPROBE_OUT", "")

# (thread name, generation) -> [collections, wall ns, thread CPU ns, objects collected]
_totals: dict[tuple[str, int], list[int]] = {}
# (thread name, generation) -> the longest collection (wall ns) since the last snapshot
_longest: dict[tuple[str, int], int] = {}
_started = threading.local()


def _thread_name() -> str:
    thread = threading.current_thread()
    if thread is threading.main_thread():
        return "loop"
    name = thread.name
    return "tape-writer" if name.startswith("tape-writer") else name.split(" ")[0]


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started.at = (time.perf_counter_ns(), time.thread_time_ns())
        return
    at = getattr(_started, "at", None)
    if at is None:
        return
    key = (_thread_name(), info["generation"])
    entry = _totals.get(key)
    if entry is None:
        entry = _totals[key] = [0, 0, 0, 0]
    wall = time.perf_counter_ns() - at[0]
    entry[0] += 1
    entry[1] += wall
    if wall > _longest.get(key, 0):
        _longest[key] = wall
    entry[2] += time.thread_time_ns() - at[1]
    entry[3] += info.get("collected", 0)
    _started.at = None


def snapshot() -> dict[str, Any]:
    """Totals since start-up, and each (thread, generation)'s longest collection since the last one."""
    longest = dict(_longest)
    _longest.clear()
    tracked = gc.get_objects()
    return {
        "collections": [[thread, gen, *values] for (thread, gen), values in list(_totals.items())],
        "longest": [[thread, gen, ns] for (thread, gen), ns in longest.items()],
        "threshold": list(gc.get_threshold()),
        "frozen": gc.get_freeze_count(),
        "tracked": len(tracked),
        # The most common types among them (what a full collection walks).
        "types": collections.Counter(type(o).__qualname__ for o in tracked).most_common(8),
        "time": time.time(),
    }


def _dump(signum: int, frame: object) -> None:
    if not OUT:
        return
    with open(OUT, "a", encoding="utf-8") as f:
        f.write(json.dumps(snapshot()) + "\n")


gc.callbacks.append(_callback)
# An experiment's knob, e.g. FAILCORE_GCPROBE_THRESHOLD=7000/10/10 (Python's default: 700,10,10).
if os.environ.get("FAILCORE_GCPROBE_THRESHOLD"):
    gc.set_threshold(*(int(x) for x in os.environ["FAILCORE_GCPROBE_THRESHOLD"].split("/")))
if OUT:
    signal.signal(signal.SIGUSR1, _dump)


class GcProbe:
    """Writes a last snapshot when mitmproxy shuts down."""

    def done(self) -> None:
        _dump(0, None)


addons = [GcProbe()]
