"""failcore: an execution chokepoint and flight recorder for AI agents, built as a mitmproxy addon.

The Python runtime API (`from failcore import run, guard`) is loaded on first use, so `import failcore`
stays cheap and never loads mitmproxy.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Blocked", "guard", "run"]


def __getattr__(name: str) -> Any:
    if name in ("run", "guard", "Blocked"):
        from failcore import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'failcore' has no attribute {name!r}")
