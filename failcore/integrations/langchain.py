"""LangChain tools through `failcore.guard`: `guard_tool(tool)` / `guard_tools(tools)`.

The guarded tool is a copy of the original with the same name, description and argument schema; each
`invoke` / `ainvoke` (or `run` / `arun`) is one guarded call, recorded as one `tool` event with the
arguments the model gave. For a `StructuredTool` or `Tool` (what `@tool` makes) the guard wraps its
function and coroutine, so the arguments are recorded under their parameter names and LangChain still
sees the function's signature (injected `callbacks`, `RunnableConfig` and `InjectedToolArg` parameters
keep working). Any other `BaseTool` subclass gets its `_run` (and its own `_arun`, when it has one)
wrapped instead. An operation the policy refuses (strict) raises `failcore.Blocked` inside the
tool before it happens, out of `invoke` / `ainvoke`, and the call is recorded BLOCKED.

`langchain-core` is imported when a tool is wrapped, not when failcore is.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

from failcore.integrations import require

# A langchain_core.tools.BaseTool (not imported here: failcore does not depend on langchain-core).
BaseTool = Any

GUARDED_KEY = "failcore_guarded"


# The call being made: its target (the tool's function, or the class's own _run bound to the tool) and
# what LangChain injects besides the model's arguments (callbacks, the run config, injected tool args).
# The guarded function is made once per tool; this carries each call's target and extras into it.
_pending: ContextVar[tuple[Callable[..., Any], dict[str, Any]]] = ContextVar("failcore_langchain_call")


def _model_signature(fn: Callable[..., Any], model_args: set[str]) -> inspect.Signature | None:
    """`fn`'s signature without `self` and the parameters LangChain injects: what the guard records."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params = [p for p in sig.parameters.values() if p.name != "self"]
    keep = [p for p in params if p.name in model_args]
    if not keep and params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        keep = params[:1]  # a single-input `Tool`: its one argument, whatever the function calls it
    return sig.replace(parameters=keep)


def _guarded_entry(fn: Callable[..., Any], label: str, model_args: set[str]) -> Callable[..., Any]:
    """A guarded function (made once) that calls the pending target with the pending extras."""
    from failcore import guard

    if inspect.iscoroutinefunction(fn):

        async def acall(*args: Any, **kwargs: Any) -> Any:
            target, injected = _pending.get()
            return await target(*args, **kwargs, **injected)

        entry: Callable[..., Any] = acall
    else:

        def call(*args: Any, **kwargs: Any) -> Any:
            target, injected = _pending.get()
            return target(*args, **kwargs, **injected)

        entry = call
    entry.__qualname__ = entry.__name__ = label
    signature = _model_signature(fn, model_args)
    if signature is not None:
        entry.__signature__ = signature  # type: ignore[attr-defined]
    return guard(name=label)(entry)


def _wrapped(fn: Callable[..., Any], label: str, model_args: set[str], *, method: bool) -> Callable[..., Any]:
    """`fn` as LangChain sees it (same signature and type hints, so it still injects callbacks, the run
    config and injected tool args), each call one guarded call recording only the model's arguments.
    `method`: `fn` is a class's `_run` / `_arun`, called with the tool as its first argument."""
    entry = _guarded_entry(fn, label, model_args)

    def pending(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], Any]:
        target = fn.__get__(args[0]) if method else fn
        injected = {k: kwargs.pop(k) for k in list(kwargs) if k not in model_args}
        return (args[1:] if method else args), _pending.set((target, injected))

    if inspect.iscoroutinefunction(fn):

        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            args, token = pending(args, kwargs)
            try:
                return await entry(*args, **kwargs)
            finally:
                _pending.reset(token)

        return functools.update_wrapper(awrapper, fn)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args, token = pending(args, kwargs)
        try:
            return entry(*args, **kwargs)
        finally:
            _pending.reset(token)

    return functools.update_wrapper(wrapper, fn)


def guard_tool(tool: BaseTool, *, name: str | None = None) -> BaseTool:
    """A copy of `tool` whose every call goes through `failcore.guard` (recorded as `name`, default the
    tool's name). Guarding an already guarded tool returns it unchanged."""
    tools = require("langchain_core.tools", "langchain-core")
    if not isinstance(tool, tools.BaseTool):
        raise TypeError(f"guard_tool expects a LangChain BaseTool, not {type(tool).__name__}")
    if (tool.metadata or {}).get(GUARDED_KEY):
        return tool
    label = name or tool.name
    metadata = {**(tool.metadata or {}), GUARDED_KEY: True}
    model_args = set(tool.args)
    if isinstance(tool, (tools.StructuredTool, tools.Tool)) and (tool.func or tool.coroutine):
        update: dict[str, Any] = {"metadata": metadata}
        if tool.func is not None:
            update["func"] = _wrapped(tool.func, label, model_args, method=False)
        if tool.coroutine is not None:
            update["coroutine"] = _wrapped(tool.coroutine, label, model_args, method=False)
        return tool.model_copy(update=update)
    guarded = tool.model_copy(update={"metadata": metadata})
    cls = type(tool)
    namespace: dict[str, Any] = {"__slots__": (), "__module__": cls.__module__}
    namespace["_run"] = _wrapped(cls._run, label, model_args, method=True)
    if cls._arun is not tools.BaseTool._arun:  # its own async body; else LangChain runs _run in a thread
        namespace["_arun"] = _wrapped(cls._arun, label, model_args, method=True)
    guarded.__class__ = type(cls.__name__, (cls,), namespace)
    return guarded


def guard_tools(tools: Iterable[BaseTool]) -> list[BaseTool]:
    """`guard_tool` over a list of tools (the list an agent or `bind_tools` takes)."""
    return [guard_tool(t) for t in tools]
