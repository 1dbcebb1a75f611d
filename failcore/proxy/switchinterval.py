"""The interpreter's switch interval lowered while a one-time import holds the GIL beside the event
loop (failcore.proxy.meter's genai-prices warm-up), shared by the warm-ups running at once."""

from __future__ import annotations

import sys
import threading

# The interpreter's switch interval while genai-prices is imported. The import holds the GIL for
# 0.3-0.5 s of CPU; whenever the event loop wakes up meanwhile (a request arrived) it waits for the
# GIL up to the switch interval, 5 ms by default, at each wake-up. Measured (benchmarks/warmup_gil.py,
# a loop sleeping 1 ms at a time beside the warm-up): it ran ~1.5x as often and its median lateness
# fell from 4.1 to 2.5 ms (BENCHMARKS.md, branch latency). Restored when the warm-up ends; only lowered.
WARM_UP_SWITCH_INTERVAL_S = 0.0005


class SharedSwitchInterval:
    """The lowered switch interval, shared by the warm-ups running at once (several proxies in one
    process): the first lowers it, the last restores what was there before the first, and only if
    nobody changed it meanwhile (an embedder's own setting stays)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.before = 0.0
        self.lowered = 0.0

    def __enter__(self) -> None:
        with self.lock:
            if self.users == 0:
                self.before = sys.getswitchinterval()
                sys.setswitchinterval(min(self.before, WARM_UP_SWITCH_INTERVAL_S))
                self.lowered = sys.getswitchinterval()
            self.users += 1

    def __exit__(self, *_: object) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0 and sys.getswitchinterval() == self.lowered:
                sys.setswitchinterval(self.before)


LOWERED_SWITCH_INTERVAL = SharedSwitchInterval()
