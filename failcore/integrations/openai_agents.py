"""OpenAI Agents SDK function tools through `failcore.guard`: `guard_function_tool(tool)`.

The SDK calls a `FunctionTool` as `on_invoke_tool(ctx, args_json)`. The guarded copy keeps the tool's
name, description and JSON schema and replaces that invoker with one that records each call as one
guarded call named after the tool, its arguments the JSON object the model sent (a body that is not a
JSON object is recorded as `{"input": ...}` and still handed to the tool unchanged, so the SDK reports
it as it would). The original invoker still runs inside the guard, so the SDK's own error handling
is unchanged: an operation the policy refuses (strict) raises `failcore.Blocked` inside the tool
before it happens, the SDK answers the model with its tool-error message, and the call is recorded
BLOCKED.

`openai-agents` is imported when a tool is wrapped, not when failcore is.
"""

from __future__ import annotations

import copy
import inspect
import json
import keyword
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from failcore.integrations import require

# An agents.FunctionTool (not imported here: failcore does not depend on openai-agents).
FunctionTool = Any

Invoker = Callable[[Any, str], Awaitable[Any]]


def model_arguments(args_json: str) -> dict[str, Any]:
    """The arguments as the guard records them: the model's JSON object, or the raw input wrapped."""
    try:
        parsed = json.loads(args_json) if args_json else {}
    except ValueError:
        return {"input": args_json}
    return parsed if isinstance(parsed, dict) else {"input": parsed}


def argument_signature(arguments: dict[str, Any]) -> inspect.Signature:
    """A signature naming each argument, so the guard records them flat: `{"city": "Paris"}`. Names that
    cannot be parameters (`"a-b"`, `"class"`) are recorded together under `arguments`."""
    if all(k.isidentifier() and not keyword.iskeyword(k) for k in arguments):
        return inspect.Signature([inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY) for k in arguments])
    return inspect.Signature([inspect.Parameter("arguments", inspect.Parameter.VAR_KEYWORD)])


class GuardedInvoker:
    """`on_invoke_tool` of a guarded FunctionTool: one `failcore.guard` call per invocation."""

    def __init__(self, original: Invoker, name: str) -> None:
        self.original = original
        self.name = name

    async def __call__(self, ctx: Any, args_json: str) -> Any:
        from failcore import guard

        original = self.original
        arguments = model_arguments(args_json)

        async def call(**_: Any) -> Any:
            return await original(ctx, args_json)

        call.__qualname__ = call.__name__ = self.name
        call.__signature__ = argument_signature(arguments)  # type: ignore[attr-defined]
        return await guard(name=self.name)(call)(**arguments)


def guard_function_tool(tool: FunctionTool, *, name: str | None = None) -> FunctionTool:
    """A copy of `tool` whose every invocation goes through `failcore.guard` (recorded as `name`,
    default the tool's name). Guarding an already guarded tool returns it unchanged."""
    agents = require("agents", "openai-agents")
    if not isinstance(tool, agents.FunctionTool):
        raise TypeError(f"guard_function_tool expects an agents.FunctionTool, not {type(tool).__name__}")
    if isinstance(tool.on_invoke_tool, GuardedInvoker):
        return tool
    guarded = copy.copy(tool)  # FunctionTool.__copy__ rebinds the SDK's invoker to the copy
    guarded.on_invoke_tool = GuardedInvoker(guarded.on_invoke_tool, name or tool.name)
    return guarded


def guard_function_tools(tools: Iterable[FunctionTool]) -> list[FunctionTool]:
    """`guard_function_tool` over a list of tools (an Agent's `tools=`)."""
    return [guard_function_tool(t) for t in tools]
