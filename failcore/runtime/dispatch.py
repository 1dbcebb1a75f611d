"""What the audit hook (failcore.runtime.hook) and the wrappers beside it (failcore.runtime.sqlitehook)
share: the guarded calls in progress (`armed`), the per-thread `busy` flag that keeps failcore's own
work from being recorded or refused (`internal`), `dispatch` into the guarded call of this thread, and
`decide`, which records an operation's event and raises Blocked when the policy refuses it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from failcore.event import Target
from failcore.runtime.context import Blocked, CallState, RunState, current_call
from failcore.runtime.events import apply_dlp, effect_event, internal_error_event

local = threading.local()
# The guarded calls in progress in this process; empty = the hook returns at once. set.add/discard are
# atomic under the GIL: no lock on the guarded path.
armed: set[CallState] = set()


class internal:
    """Context manager: failcore's own work on this thread is not recorded or refused."""

    __slots__ = ("_was",)

    def __enter__(self) -> None:
        self._was = getattr(local, "busy", False)
        local.busy = True

    def __exit__(self, *_exc: object) -> None:
        local.busy = self._was


def dispatch(
    event: str, handler: Callable[[CallState, tuple[Any, ...]], None], args: tuple[Any, ...]
) -> None:
    """Judge an operation in the guarded call of this context (or of this adopted thread), if any."""
    if getattr(local, "busy", False):
        return
    call = current_call.get()
    if call is None:
        call = getattr(threading.current_thread(), "_failcore_call", None)
        if call is None or not call.open:
            return
    local.busy = True
    try:
        handler(call, args)
    except Blocked:
        raise
    except Exception as exc:
        _internal_failure(call, event, exc)
    finally:
        local.busy = False


def _internal_failure(call: CallState, event: str, exc: Exception) -> None:
    if not record_failure(call.run, f"runtime.hook:{event}", exc):
        raise Blocked(f"failcore failed while checking {event} and the policy says fail_open: false")


def record_failure(run: RunState, where: str, exc: Exception) -> bool:
    """Record a failure inside failcore; True when the policy fails open (the default)."""
    run.internal_errors += 1
    fail_open = True
    try:
        fail_open = run.rules.fail_open
        run.record(internal_error_event(run.run_id, where, exc, fail_open))
    except Exception:  # pragma: no cover - the last line of defence
        pass
    return fail_open


@dataclass(frozen=True, slots=True)
class FailedClosed:
    """Stands in for a verdict the policy could not give when it says fail_open: false."""

    decision: str = "BLOCK"
    rule: str = "internal_error"
    reason: str = "failcore could not check this operation and the policy says fail_open: false"


def ask(call: CallState, check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The policy's verdict, or (failcore failed) None when failing open, a refusal when failing closed."""
    try:
        return check(*args, **kwargs)
    except Exception as exc:
        return None if record_failure(call.run, "runtime.policy", exc) else FailedClosed()


def decide(
    call: CallState,
    kind: str,
    action: str,
    payload: dict[str, Any] | Callable[[], dict[str, Any]],
    verdicts: list[Any],
    summary: str,
    target: Target | None = None,
) -> None:
    blocking = next((v for v in verdicts if v is not None and v.decision == "BLOCK"), None)
    run = call.run
    call.effects[kind] += 1
    # An allowing verdict can name why too (net.failcore_proxy): kept when nothing blocks.
    named = blocking or next((v for v in verdicts if v is not None and v.rule), None)
    rule = named.rule if named else None
    reason = named.reason if named else None
    if blocking is None:
        decision, would_block = "ALLOW", False
    elif run.strict or isinstance(blocking, FailedClosed):
        decision, would_block = "BLOCK", False
        call.effects["blocked"] += 1
        if call.blocked_by is None:
            call.blocked_by = (rule, reason)
        run.blocked += 1
    else:
        decision, would_block = "WARN", True
        call.would_block = True
        run.warned += 1

    now = time.time()
    scanner, salt = run.rules.current().scanner, run.rules.salt

    def build() -> dict[str, Any]:
        body = payload() if callable(payload) else payload
        event = effect_event(
            call,
            kind,
            action,
            body,
            decision=decision,
            rule=rule,
            reason=reason,
            would_block=would_block,
            summary=summary,
            target=target,
            ts=now,
        )
        return apply_dlp(event, scanner, salt)  # a path can hold a secret too

    run.record(build)  # type: ignore[arg-type]
    if decision == "BLOCK":
        raise Blocked(f"failcore blocked {action} {summary}: {reason or rule}", rule=rule, action=action)
