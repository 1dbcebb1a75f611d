"""Where a guarded call stands: the run it belongs to and the call it is in, carried by contextvars.

asyncio tasks inherit both (a task copies the context it was created in), and so do `asyncio.to_thread`
and `contextvars.copy_context().run`. A plain `threading.Thread` started inside a guarded call is
adopted by the audit hook (`_thread.start_new_thread`): its operations count as the call's effects while
the call lasts. Guarded calls on a thread that carries no run (a thread started before `run()`) join the
innermost run open in the process, so no tool call of the process goes unrecorded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from failcore.runtime.rules import RuntimeRules


class Blocked(PermissionError):
    """A guarded call tried an operation the policy refuses (strict mode); raised before it happens."""

    def __init__(self, message: str, *, rule: str | None = None, action: str | None = None) -> None:
        super().__init__(message)
        self.rule = rule
        self.action = action


@dataclass(slots=True)
class RunState:
    """One `run()`: its id, rules, strictness, where its events go and what it has counted."""

    run_id: str
    rules: RuntimeRules
    strict: bool
    emit: Callable[[dict[str, Any] | Callable[[], dict[str, Any]]], bool]
    events: int = 0
    blocked: int = 0
    warned: int = 0
    tool_calls: int = 0
    failed: int = 0
    internal_errors: int = 0
    dropped: int = 0

    def record(self, event: dict[str, Any] | Callable[[], dict[str, Any]]) -> None:
        self.events += 1
        if not self.emit(event):
            self.dropped += 1


@dataclass(slots=True, eq=False)
class CallState:
    """One guarded call in progress: its id, parent and the effects seen so far."""

    run: RunState
    call_id: str
    name: str
    parent: str | None
    effects: dict[str, int] = field(default_factory=lambda: {"fs": 0, "exec": 0, "connect": 0, "blocked": 0})
    # The first operation refused in strict mode: the call ends BLOCKED with its rule.
    blocked_by: tuple[str | None, str | None] | None = None
    would_block: bool = False
    warnings: tuple[dict[str, str], ...] = ()
    open: bool = True
    # Datagram destinations (socket.sendto/sendmsg) recorded with their verdict: recorded once each.
    sent: dict[tuple[Any, ...], tuple[str | None, str | None]] = field(default_factory=dict)


current_run: ContextVar[RunState | None] = ContextVar("failcore_run", default=None)
current_call: ContextVar[CallState | None] = ContextVar("failcore_call", default=None)

# Runs open in this process, innermost last (for guarded calls on threads that carry no run).
_open_runs: list[RunState] = []
_runs_lock = threading.Lock()


def push_run(state: RunState) -> None:
    with _runs_lock:
        _open_runs.append(state)


def pop_run(state: RunState) -> None:
    with _runs_lock:
        if state in _open_runs:
            _open_runs.remove(state)


def active_run() -> RunState | None:
    """The run of this context, else the innermost run open in the process."""
    state = current_run.get()
    if state is not None:
        return state
    with _runs_lock:
        return _open_runs[-1] if _open_runs else None
