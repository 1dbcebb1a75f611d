"""failcore's in-process runtime: `run()` opens (or joins) a run, `@guard()` records each tool call
with the file, process and socket operations it makes (seen by a PEP 578 audit hook), checked against
the policy's fs/exec/network sections and refused before they happen in strict mode.

Modules, one job each: context (contextvars, run/call state), rules (policy + hot reload), hook (audit
hook) with dispatch (the state it shares with its wrappers), sqlitehook (SQLite files and authorizer)
and names (which name an address came from), events (building the tape's events), sink (own tape or
the enclosing `failcore run`), guarded (`guard`), session (`run`); channel is the `failcore run` side
of the socket children send events to.
The names are loaded on first use, so `failcore run` importing the channel loads neither hook nor guard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from failcore.runtime.context import Blocked
    from failcore.runtime.guarded import guard
    from failcore.runtime.session import run

__all__ = ["Blocked", "guard", "run"]

_WHERE = {
    "run": "failcore.runtime.session",
    "guard": "failcore.runtime.guarded",
    "Blocked": "failcore.runtime.context",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'failcore.runtime' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
