"""Fail-open by construction: every hook of every failcore addon runs inside `guarded`, and every
part of a body's stream callable (which mitmproxy calls itself, outside any hook) reports to a
`StreamFailures`.

An exception in failcore must never break an agent's traffic (unless the policy says `fail_open: false`:
then what the hook was deciding is refused, see failcore.proxy.failclosed, and a stream is cut); it is
recorded as an `internal_error` event either way.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from mitmproxy import flow as mflow
from mitmproxy import http

from failcore.proxy.cutoff import CutVerdict, close_upstream, cut_client_stream, drop_all
from failcore.proxy.failclosed import refuse
from failcore.proxy.session import FlowState, Session


class HasSession(Protocol):
    session: Session


F = TypeVar("F", bound=Callable[..., Any])


def _flow_of(args: tuple[Any, ...]) -> mflow.Flow | None:
    return args[0] if args and isinstance(args[0], mflow.Flow) else None


def failed(owner: HasSession, hook: str, args: tuple[Any, ...], where: str, exc: Exception) -> None:
    """Recorded; and under `fail_open: false` what the hook was deciding is refused."""
    owner.session.internal_error(_flow_of(args), where, exc)
    if not owner.session.fail_open:
        refuse(owner.session, hook, args[0] if args else None, where, f"{type(exc).__name__}: {exc}")


async def _guard_awaitable(
    owner: HasSession, pending: Any, args: tuple[Any, ...], where: str, hook: str
) -> Any:
    try:
        return await pending
    except Exception as e:
        failed(owner, hook, args, where, e)
        return None


GUARDED = "_failcore_guarded"


def guarded_parts(fn: object) -> tuple[str, Callable[..., Any]] | None:
    """For a function `guarded` wrapped: its `where` and the function unwrapped (the dispatch in
    failcore.proxy.dispatch guards the call itself, as the wrapper would)."""
    return getattr(fn, GUARDED, None)


def guarded(where: str) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(self: HasSession, *args: Any) -> Any:
                try:
                    return await fn(self, *args)
                except Exception as e:
                    failed(self, fn.__name__, args, where, e)
                    return None

            setattr(async_wrapper, GUARDED, (where, fn))
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(self: HasSession, *args: Any) -> Any:
            try:
                result = fn(self, *args)
            except Exception as e:
                failed(self, fn.__name__, args, where, e)
                return None
            if result is not None and inspect.isawaitable(result):
                # A sync hook that only sometimes needs to wait hands back a coroutine: guard it too.
                return _guard_awaitable(self, result, args, where, fn.__name__)
            return result

        setattr(wrapper, GUARDED, (where, fn))
        return wrapper  # type: ignore[return-value]

    return decorate


def _part_name(part: object) -> str:
    name = getattr(part, "__qualname__", None)
    return str(name) if isinstance(name, str) else type(part).__name__


class StreamFailures:
    """Where a part of a body's stream callable (a cut guard, an observer, the tap) that raised reports.

    The failure is recorded (an `internal_error` event, and the exchange's own). Fail-open: the bytes go
    on and the part keeps being asked about every later chunk: left out, a part an upstream (or client)
    can make raise once would leave the rest of the stream unscanned or unmetered. A part that raises
    again is counted, not recorded again (one event per failing part, however long the stream; the
    exchange's error says on how many chunks it raised). `fail_open: false`: the chunk
    the part was looking at, and every later one, is not forwarded: a response stream is cut
    (failcore.proxy.cutoff, cut reason `internal_error`), a request stream dropped, its upstream connection
    closed (never a truncated body ended as a whole request) and its flow killed."""

    __slots__ = ("failing", "flow", "session", "side", "state")

    def __init__(self, session: Session, flow: http.HTTPFlow, state: FlowState, side: str) -> None:
        self.session = session
        self.flow = flow
        self.state = state
        self.side = side  # "request" or "response"
        # id(part) -> [chunks it raised on, the exchange's error as its first failure set it]
        self.failing: dict[int, list[Any]] = {}

    def verdict(self, exc: Exception, part: object) -> CutVerdict | None:
        """Record the failure of `part`; the cut `fail_open: false` asks for (None: go on without it)."""
        where = f"{self.side} stream: {_part_name(part)}"
        failing = self.failing.get(id(part))
        if failing is None:
            self.session.internal_error(self.flow, where, exc)
            self.failing[id(part)] = [1, self.state.internal_error]
        else:
            failing[0] += 1
            if self.state.internal_error == failing[1]:  # (not since overtaken by another failure)
                failing[1] = self.state.internal_error = (
                    f"{where}: {type(exc).__name__}: {exc} (raised on {failing[0]} chunks, recorded once)"
                )
        if self.session.fail_open:
            return None
        return CutVerdict("internal_error", f"failcore failed in {where}; the policy says fail_open: false")

    def stop(self, exc: Exception, part: object) -> bool:
        """`verdict`, acted on at once (for a part that cannot return a verdict): True when nothing more
        of the stream, this chunk included, may be forwarded."""
        verdict = self.verdict(exc, part)
        if verdict is None:
            return False
        if self.side == "response":
            cut_client_stream(self.flow, verdict.reason, detail=verdict.detail, state=self.state)
        else:
            self.flow.request.stream = drop_all
            close_upstream(self.flow)
            if self.flow.killable:
                self.flow.kill()
        return True
