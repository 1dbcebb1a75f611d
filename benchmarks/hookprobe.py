"""A benchmark-only mitmproxy script that times failcore's hooks inside a real mitmdump.

    mitmdump -s addons/failcore_addon.py -s benchmarks/hookprobe.py   (FAILCORE_HOOKPROBE_OUT=FILE)

When the proxy runs, it wraps every hook the `failcore` addon answers (the FailCore dispatcher's, one
per mitmproxy hook) and the evidence backlog's build so each call's thread CPU time
(`time.thread_time_ns`: what the call cost, without the time the OS gave other tasks meanwhile) is
added up per hook, with the number of calls (with FAILCORE_HOOKPROBE_BY_CONCERN=1, also per concern:
`Concern.hook`, inside `hook`). An awaitable a hook returns is timed too, each step on its own. On
SIGUSR1 it appends one JSON line with the totals so far to FAILCORE_HOOKPROBE_OUT, so a harness takes
a snapshot before and after a load and subtracts. Never part of failcore:
benchmarks/https_cost.py loads it with an extra `-s` (`--probe`).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import ctx, hooks

OUT = os.environ.get("FAILCORE_HOOKPROBE_OUT", "")
# FAILCORE_HOOKPROBE_BY_CONCERN=1: each concern's call is timed too (`Concern.hook`, inside `hook`).
BY_CONCERN = os.environ.get("FAILCORE_HOOKPROBE_BY_CONCERN") == "1"

# name -> [calls, thread CPU ns]
_totals: dict[str, list[int]] = {}


def _add(name: str, ns: int) -> None:
    entry = _totals.get(name)
    if entry is None:
        entry = _totals[name] = [0, 0]
    entry[0] += 1
    entry[1] += ns


def _steps(name: str, pending: Awaitable[Any]) -> Any:
    """The await protocol's iterator over `pending`, timing each of its synchronous steps."""
    iterator = pending.__await__()
    value: Any = None
    error: BaseException | None = None
    while True:
        t0 = time.thread_time_ns()
        try:
            step = iterator.throw(error) if error is not None else iterator.send(value)
        except StopIteration as stop:
            _add(name + " (await)", time.thread_time_ns() - t0)
            return stop.value
        _add(name + " (await)", time.thread_time_ns() - t0)
        error = None
        try:
            value = yield step
        except BaseException as e:
            error = e


class _Timed:
    def __init__(self, name: str, pending: Awaitable[Any]) -> None:
        self.name = name
        self.pending = pending

    def __await__(self) -> Any:
        return _steps(self.name, self.pending)


def _wrap(name: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(handler)
    def call(*args: Any) -> Any:
        t0 = time.thread_time_ns()
        try:
            result = handler(*args)
        finally:
            _add(name, time.thread_time_ns() - t0)
        if result is not None and inspect.isawaitable(result):
            return _Timed(name, result)
        return result

    return call


def _snapshot(*_: Any) -> None:
    if not OUT:
        return
    line = json.dumps({"totals": _totals, "at": time.time()})
    with open(OUT, "a") as f:
        f.write(line + "\n")


def _dispatch_timed(failcore: Any, hook: str, owners: list[Any], handlers: list[Any]) -> Any:
    """The checkout's own dispatch over timed handlers: pruned as it prunes (failcore.proxy.dispatch),
    or every handler (a checkout from before it)."""
    try:
        from failcore.proxy.dispatch import pruned_dispatcher
    except ImportError:
        from failcore.proxy import _dispatcher  # type: ignore[attr-defined]

        return _dispatcher(handlers)
    return pruned_dispatcher(failcore.session, hook, owners, handlers)


class HookProbe:
    def running(self) -> None:
        failcore = ctx.master.addons.get("failcore")
        if failcore is None:
            return
        for hook in hooks.all_hooks:
            if hook in ("running", "done", "configure", "load"):
                continue
            handler = getattr(failcore, hook, None)
            if not callable(handler):
                continue
            if BY_CONCERN and hasattr(failcore, "concerns"):
                owners = [c for c in failcore.concerns if callable(getattr(c, hook, None))]
                handler = _dispatch_timed(
                    failcore,
                    hook,
                    owners,
                    [_wrap(f"{type(c).__name__}.{hook}", getattr(c, hook)) for c in owners],
                )
            setattr(failcore, hook, _wrap(hook, handler))
        from failcore.evidence.backlog import EvidenceBacklog

        build = EvidenceBacklog.build

        def timed_build(self: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time_ns()
            try:
                return build(self, *args, **kwargs)
            finally:
                _add("EvidenceBacklog.build", time.thread_time_ns() - t0)

        EvidenceBacklog.build = timed_build  # type: ignore[method-assign]
        signal.signal(signal.SIGUSR1, _snapshot)


addons = [HookProbe()]
