"""OpenAI Agents SDK function tools through `failcore.guard`: `guard_function_tool(tool)`.

The SDK calls a `FunctionTool` as `on_invoke_tool(ctx, args_json)`. The guarded copy keeps the tool's
name, description and JSON schema and replaces that invoker with one that records each call as one
guarded call named after the tool, its arguments the JSON object the model sent (a body that is not a
JSON object is recorded as `{"input": ...}` and still handed to the tool unchanged, so the SDK reports
it as it would). The original invoker still runs inside the guard, so the SDK's own error handling
is unchanged: an operation the policy refuses (strict) raises `failcore.Blocked` inside the tool
before it happens, the SDK answers the model with its tool-error message, and the call is recorded
BLOCKED. The SDK's default message hides every error's text from the model; a tool created with
`function_tool(failure_error_function=tell_model_blocked)` tells the model which rule refused what (so
it can choose another path) and keeps the SDK's default message for every other error.

`openai-agents` is imported when a tool is wrapped, not when failcore is.
"""

from __future__ import annotations

import copy
import inspect
import json
import keyword
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
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


class _Handled:
    """What the SDK's failure handler saw during one guarded invocation."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: Exception | None = None


_handled: ContextVar[_Handled | None] = ContextVar("failcore_agents_handled", default=None)


def tell_model_blocked(ctx: Any, error: Exception) -> str:
    """A `failure_error_function` for `agents.function_tool`: a refusal by failcore's policy becomes a
    message naming the rule and the refused operation, so the model can choose another way; any other
    error gets the SDK's default message (which shows the model nothing of it)."""
    from failcore.runtime.context import Blocked

    holder = _handled.get()
    if holder is not None:
        holder.error = error
    if isinstance(error, Blocked):
        rule = f" (rule {error.rule})" if error.rule else ""
        return f"failcore's policy refused this tool call{rule}: {error}. Do not retry it unchanged."
    agents = require("agents", "openai-agents")
    return str(agents.default_tool_error_function(ctx, error))


def _recording(handler: Callable[[Any, Exception], Any]) -> Callable[[Any, Exception], Any]:
    """A failure handler the tool's own author chose, which also tells the guard the call failed."""

    def failure(ctx: Any, error: Exception) -> Any:
        holder = _handled.get()
        if holder is not None:
            holder.error = error
        return handler(ctx, error)

    return failure


class GuardedInvoker:
    """`on_invoke_tool` of a guarded FunctionTool: one `failcore.guard` call per invocation.

    The SDK's invoker catches the tool's exception and answers with its failure handler's message, so
    the guard would see a normal return. The guarded copy's failure handler notes the exception
    (`_handled`); the guarded call then re-raises it, so the tape records the call FAIL (or BLOCKED)
    with its error, and the model still gets the handler's message."""

    def __init__(self, original: Invoker, name: str) -> None:
        self.original = original
        self.name = name

    async def __call__(self, ctx: Any, args_json: str) -> Any:
        from failcore import guard

        original = self.original
        arguments = model_arguments(args_json)
        holder = _Handled()
        answer: list[Any] = []

        async def call(**_: Any) -> Any:
            result = await original(ctx, args_json)
            if holder.error is not None:
                answer.append(result)
                raise holder.error
            return result

        call.__qualname__ = call.__name__ = self.name
        call.__signature__ = argument_signature(arguments)  # type: ignore[attr-defined]
        token = _handled.set(holder)
        try:
            return await guard(name=self.name)(call)(**arguments)
        except Exception as exc:
            if answer and exc is holder.error:
                return answer[0]
            raise
        finally:
            _handled.reset(token)


def _note_failures(guarded: FunctionTool, agents_tool: Any) -> None:
    """Give the copy a failure handler that tells the guard: the SDK's default becomes
    `tell_model_blocked` (the same message for every error but a refusal), an author's own handler is
    kept and wrapped. Tools that let errors propagate (handler None) need nothing. Uses the SDK's
    helpers for a FunctionTool's failure settings; without them (another SDK version) a failure the SDK
    handles is recorded as the message it returned."""
    resolve = getattr(agents_tool, "resolve_function_tool_failure_error_function", None)
    assign = getattr(agents_tool, "set_function_tool_failure_error_function", None)
    if resolve is None or assign is None or guarded.output_json_schema is not None:
        return
    handler = resolve(guarded)
    if handler is None:
        return
    if handler is getattr(agents_tool, "default_tool_error_function", None):
        assign(guarded, tell_model_blocked)
    elif handler is not tell_model_blocked:
        assign(guarded, _recording(handler))


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
    _note_failures(guarded, require("agents.tool", "openai-agents"))
    return guarded


def guard_function_tools(tools: Iterable[FunctionTool]) -> list[FunctionTool]:
    """`guard_function_tool` over a list of tools (an Agent's `tools=`)."""
    return [guard_function_tool(t) for t in tools]
