"""GcTune: the proxy's start-up heap is moved out of the garbage collector's way (`gc.freeze`).

Python's cyclic garbage collector walks every tracked object of the generation it collects. A proxy
with failcore loaded holds tens of thousands of long-lived objects from start-up (mitmproxy, the
policy, the DLP rules and engine), and every full collection under load walks them all again although
none of them ever becomes garbage: benchmarks/gc_bench.py measured those walks at ~70-100 ms each, in
the thread that happened to allocate (the event loop or the tape writer), with the GIL held.

Once the policy's DLP engine is built and no exchange is in flight, this addon runs one full
collection and then `gc.freeze()`: everything alive then moves to the permanent generation, which no
later collection walks. It does it again after a policy reload has swapped the rules in
(`gc.unfreeze()` first, so the replaced policy and engine are collected rather than kept frozen), and
after genai-prices' price data has loaded (the meter loads it in a thread once the proxy runs: ~42,000
objects that would otherwise be walked by every full collection; `Session.heap_loads`).

Costs, by design: it changes the whole process's collector, not only failcore's objects (an embedder
that wants its own GC tuning, or freezes its own heap, sets `failcore_gc_freeze=false`: the last proxy
to stop thaws the whole heap). Several proxies in one process share the freeze: one stopping leaves it
in force while another holds it. Frozen objects are still freed by
reference counting; what is frozen while alive and later dies *in a reference cycle* stays in memory
until the next freeze (the next reload) or until the option is turned off. Freezing only when no
exchange is in flight (or, if that moment does not come within 30 s, with what is in flight then)
bounds that to what start-up or a reload left in cycles. Each freeze runs one
full collection on the event loop (once at start-up and once per reload).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time

from failcore.dlp.pending import PendingEngine
from failcore.proxy.session import Session

logger = logging.getLogger("failcore")

# How often the watch looks for a newly built engine (start-up, reload) and an idle moment.
CHECK_SECONDS = 0.5
# How long a freeze waits for a moment with no exchange in flight (long-lived streams and tunnels may
# never leave one): then it freezes anyway, keeping what those exchanges hold then.
IDLE_WAIT_SECONDS = 30.0

# The GcTune instances whose freeze is in force. The collector is the process's: with two proxies in
# one process (an embedder, tests), one stopping must not thaw the other's heap; the last one thaws.
_holders: set[int] = set()
_holders_lock = threading.Lock()


def rules_built(session: Session) -> bool:
    """Whether the policy's DLP engine (if any) has finished building (or failed to)."""
    engine = session.dlp.engine if session.dlp is not None else None
    return not isinstance(engine, PendingEngine) or (engine.ready and not engine.interim)


def freeze_heap() -> int:
    """Collect everything collectable, then freeze what is left; returns the objects frozen."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcTune:
    """Freezes the heap after start-up and after each policy reload (see the module docstring)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._task: asyncio.Task[None] | None = None
        # The (policy, rules, session.heap_loads) the heap was last frozen with.
        self._frozen_for: tuple[object, object, int] | None = None
        # Since when a freeze has been due (rules built) but exchanges were in flight.
        self._due_since: float | None = None

    def configure(self, updated: set[str]) -> None:
        if "failcore_gc_freeze" in updated and not self.session.settings.gc_freeze:
            self._stop()
            self._thaw()
        elif "failcore_gc_freeze" in updated and self._task is None:
            self._start()

    def running(self) -> None:
        self._start()

    def done(self) -> None:
        # An embedding process (a test, `failcore run`) goes on with Python's collector as it was.
        self._stop()
        self._thaw()

    def _start(self) -> None:
        if not self.session.settings.gc_freeze or self._task is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # configure before the proxy runs: running() starts it
        self._task = loop.create_task(self._watch())

    def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _thaw(self) -> None:
        """Lets go of this proxy's freeze; the heap thaws when no other proxy here holds one."""
        if self._frozen_for is None:
            return
        self._frozen_for = None
        with _holders_lock:
            _holders.discard(id(self))
            if not _holders:
                gc.unfreeze()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            try:
                self.check()
            except Exception as e:  # a failure here must not stop the watch, nor touch traffic
                self.session.internal_error(None, "gc freeze", e)

    def check(self, now: float | None = None) -> bool:
        """Freeze if the rules in force changed since the last freeze, are built, and no exchange is
        in flight (or none has been for IDLE_WAIT_SECONDS). Returns whether it froze."""
        policy, dlp, loads = self.session.policy, self.session.dlp, self.session.heap_loads
        last = self._frozen_for
        if last is not None and last[0] is policy and last[1] is dlp and last[2] == loads:
            return False
        if policy is None or not rules_built(self.session):
            return False
        if self.session.flows:
            now = time.monotonic() if now is None else now
            if self._due_since is None:
                self._due_since = now
            if now - self._due_since < IDLE_WAIT_SECONDS:
                return False
        self._due_since = None
        self._frozen_for = (policy, dlp, loads)
        with _holders_lock:
            _holders.add(id(self))
            frozen = freeze_heap()
        logger.debug("failcore: %d objects moved out of the garbage collector's walks (gc.freeze)", frozen)
        return True
