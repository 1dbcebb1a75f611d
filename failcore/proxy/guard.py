"""Fail-open by construction: every hook of every failcore addon runs inside `guarded`.

An exception in failcore must never break an agent's traffic (unless the policy says `fail_open: false`:
then what the hook was deciding is refused, see failcore.proxy.failclosed); it is recorded as an
`internal_error` event either way.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from mitmproxy import flow as mflow

from failcore.proxy.failclosed import refuse
from failcore.proxy.session import Session


class HasSession(Protocol):
    session: Session


F = TypeVar("F", bound=Callable[..., Any])


def _flow_of(args: tuple[Any, ...]) -> mflow.Flow | None:
    return args[0] if args and isinstance(args[0], mflow.Flow) else None


def _failed(owner: HasSession, hook: str, args: tuple[Any, ...], where: str, exc: Exception) -> None:
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
        _failed(owner, hook, args, where, e)
        return None


def guarded(where: str) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(self: HasSession, *args: Any) -> Any:
                try:
                    return await fn(self, *args)
                except Exception as e:
                    _failed(self, fn.__name__, args, where, e)
                    return None

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(self: HasSession, *args: Any) -> Any:
            try:
                result = fn(self, *args)
            except Exception as e:
                _failed(self, fn.__name__, args, where, e)
                return None
            if result is not None and inspect.isawaitable(result):
                # A sync hook that only sometimes needs to wait hands back a coroutine: guard it too.
                return _guard_awaitable(self, result, args, where, fn.__name__)
            return result

        return wrapper  # type: ignore[return-value]

    return decorate
