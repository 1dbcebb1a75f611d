"""failcore's in-process runtime: `run()` opens (or joins) a run, `@guard()` records each tool call
with the file, process and socket operations it makes (seen by a PEP 578 audit hook), checked against
the policy's fs/exec/network sections and refused before they happen in strict mode.

Modules, one job each: context (contextvars, run/call state), rules (policy + hot reload), hook (audit
hook), events (building the tape's events), sink (own tape or the enclosing `failcore run`), guard, run;
channel is the `failcore run` side of the socket children send their events to.
"""

from __future__ import annotations

from failcore.runtime.context import Blocked
from failcore.runtime.guard import guard
from failcore.runtime.run import run

__all__ = ["Blocked", "guard", "run"]
