"""How failcore.proxy.FailCore calls its concerns' hooks: one call per hook that visits, in order, only
the concerns that can do anything under the session's current policy, settings and DLP scanner.

Two costs of the plain dispatch are cut here, each a few microseconds per exchange:

- A concern may say which of its hooks would do nothing, on any flow, under the session's current
  state (`idle_hooks()`, see `Idle`): those are not called. The lists are taken again whenever
  `session.policy`, `session.settings` or `session.dlp` is no longer the object they were taken under
  (a policy reload, a `configure`), checked at each hook call, so no path that changes them can leave
  a stale list behind.
- A hook method wrapped by failcore.proxy.guard's `guarded` is called unwrapped, and its fail-open guard
  is kept here, around the call: the same `internal_error` (its `where`, the hook's name), the same
  refusal under `fail_open: false`, an awaitable it hands back guarded alike. An unguarded hook's
  exception goes to mitmproxy, as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Sequence
from typing import Any, NamedTuple, Protocol

from failcore.proxy.guard import failed, guarded_parts
from failcore.proxy.session import Session


class Idle(Protocol):
    def idle_hooks(self) -> Collection[str]:
        """This concern's hooks that would do nothing, on any flow and connection, under the session's
        current `policy`, `settings` and `dlp`. The answer may depend on those, and on the concern's own
        state only where that state changes with them, or only inside a hook the answer keeps."""
        ...


class Step(NamedTuple):
    call: Callable[..., Any]  # the bound hook, unwrapped when it is guarded
    where: str | None  # guarded's name for it; None: not guarded (an exception goes to mitmproxy)
    owner: Any  # the concern (its session records a failure)


def step(handler: Callable[..., Any]) -> Step:
    owner = getattr(handler, "__self__", None)
    parts = guarded_parts(getattr(handler, "__func__", handler))
    if parts is None or owner is None:
        return Step(handler, None, owner)
    where, fn = parts
    return Step(fn.__get__(owner), where, owner)


def run(hook: str, steps: Sequence[Step], args: tuple[Any, ...], start: int = 0) -> Any:
    """Call steps[start:] in order; the first that hands back an awaitable is awaited, and the rest are
    called after it, in a coroutine returned here (so hooks whose concerns all answer synchronously
    cost no coroutine). Hooks return None almost always: only then is the awaitable check skipped."""
    i = start
    n = len(steps)
    while i < n:
        call, where, owner = steps[i]
        i += 1
        try:
            result = call(*args)
        except Exception as e:
            if where is None:
                raise
            failed(owner, hook, args, where, e)
            continue
        if result is not None and inspect.isawaitable(result):
            return _finish(hook, steps, args, i, result)
    return None


async def _finish(hook: str, steps: Sequence[Step], args: tuple[Any, ...], i: int, pending: Any) -> None:
    """Await the awaitable steps[i - 1] handed back (guarded alike), then run the rest as `run` does."""
    _, where, owner = steps[i - 1]
    try:
        await pending
    except Exception as e:
        if where is None:
            raise
        failed(owner, hook, args, where, e)
    rest = run(hook, steps, args, i)
    if rest is not None:  # (the next awaitable, and what follows it)
        await rest


def pruned_dispatcher(
    session: Session, hook: str, concerns: Sequence[object], handlers: Sequence[Callable[..., Any]]
) -> Callable[..., Any]:
    """One call that runs the hook's handlers in order, leaving out those whose concern says the hook is
    idle (see the module docstring); `concerns[i]` owns `handlers[i]`."""
    everything = tuple(zip(concerns, (step(h) for h in handlers), strict=True))
    # [policy, settings, dlp, steps]: what the steps were chosen under, and the steps.
    chosen: list[Any] = [object(), object(), object(), ()]

    def choose() -> tuple[Step, ...]:
        chosen[:3] = session.policy, session.settings, session.dlp
        chosen[3] = steps = tuple(s for concern, s in everything if hook not in _idle(concern))
        return steps

    def dispatch(*args: Any) -> Any:
        s = session
        if s.policy is chosen[0] and s.settings is chosen[1] and s.dlp is chosen[2]:
            steps = chosen[3]
        else:
            steps = choose()
        return run(hook, steps, args) if steps else None

    return dispatch


def _idle(concern: object) -> Collection[str]:
    idle_hooks = getattr(concern, "idle_hooks", None)
    return idle_hooks() if idle_hooks is not None else ()
