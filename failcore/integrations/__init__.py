"""Wrap the tools of agent frameworks so every call goes through `failcore.guard`.

One call each: `failcore.integrations.langchain.guard_tool(tool)` (LangChain, `langchain-core`) and
`failcore.integrations.openai_agents.guard_function_tool(tool)` (OpenAI Agents SDK, `openai-agents`).
The frameworks are imported when a tool is wrapped, never when failcore is: `pip install
'failcore[integrations]'` brings them.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType


def require(module: str, extra_hint: str) -> ModuleType:
    """Import an optional framework, or say which package to install (no backtrace for a missing one)."""
    try:
        return import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not module.startswith(e.name.split(".")[0]):
            raise
        raise ModuleNotFoundError(
            f"{extra_hint} is not installed: pip install 'failcore[integrations]' (or {extra_hint})",
            name=e.name,
        ) from None
