"""LangChain tools through `failcore.guard`: `guard_tool(tool)` / `guard_tools(tools)`.

The guarded tool is a copy of the original with the same name, description and argument schema; each
`invoke` / `ainvoke` (or `run` / `arun`) is one guarded call, recorded as one `tool` event with the
arguments the model gave. For a `StructuredTool` or `Tool` (what `@tool` makes) the guard wraps its
function and coroutine, so the arguments are recorded under their parameter names and LangChain still
sees the function's signature (injected `callbacks`, `RunnableConfig` and `InjectedToolArg` parameters
keep working). Any other `BaseTool` subclass gets its `_run` (and its own `_arun`, when it has one)
wrapped instead. A call the policy blocks raises before the tool body runs, as `guard` does.

`langchain-core` is imported when a tool is wrapped, not when failcore is.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from failcore.integrations import require

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

GUARDED_KEY = "failcore_guarded"


def _guard(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    from failcore import guard

    return guard(name=name)


def _guarded_function(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    guarded = _guard(name)(fn)
    # LangChain reads the function's signature and type hints to inject callbacks and the run config.
    functools.update_wrapper(guarded, fn)
    return guarded


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
    if isinstance(tool, (tools.StructuredTool, tools.Tool)) and (tool.func or tool.coroutine):
        update: dict[str, Any] = {"metadata": metadata}
        if tool.func is not None:
            update["func"] = _guarded_function(tool.func, label)
        if tool.coroutine is not None:
            update["coroutine"] = _guarded_function(tool.coroutine, label)
        return tool.model_copy(update=update)
    guarded = tool.model_copy(update={"metadata": metadata})
    guarded.__class__ = _guarded_class(type(tool), tools.BaseTool, label)
    return guarded


def guard_tools(tools: Iterable[BaseTool]) -> list[BaseTool]:
    """`guard_tool` over a list of tools (the list an agent or `bind_tools` takes)."""
    return [guard_tool(t) for t in tools]


def _split(tool: Any, method: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[dict, dict]:
    """The model's arguments apart from what LangChain injects (run_manager, the run config, callbacks)."""
    accepted = set(tool.args)
    injected = {k: v for k, v in kwargs.items() if k not in accepted}
    return {k: v for k, v in kwargs.items() if k in accepted}, injected


@functools.cache
def _guarded_class(cls: type, base_tool: type, label: str) -> type:
    """A subclass of a class-based tool whose `_run` (and own `_arun`) are guarded calls."""
    base_run = cls._run
    own_arun = cls._arun is not base_tool._arun

    def _run(self: Any, *args: Any, **kwargs: Any) -> Any:
        model_args, injected = _split(self, base_run, kwargs)

        def call(*args: Any, **model_args: Any) -> Any:
            return base_run(self, *args, **model_args, **injected)

        call.__qualname__ = call.__name__ = label
        return _guard(label)(call)(*args, **model_args)

    _run.__signature__ = inspect.signature(base_run)  # type: ignore[attr-defined]
    namespace: dict[str, Any] = {"__slots__": (), "_run": _run, "__module__": cls.__module__}
    if own_arun:
        base_arun = cls._arun

        async def _arun(self: Any, *args: Any, **kwargs: Any) -> Any:
            model_args, injected = _split(self, base_arun, kwargs)

            async def call(*args: Any, **model_args: Any) -> Any:
                return await base_arun(self, *args, **model_args, **injected)

            call.__qualname__ = call.__name__ = label
            return await _guard(label)(call)(*args, **model_args)

        _arun.__signature__ = inspect.signature(base_arun)  # type: ignore[attr-defined]
        namespace["_arun"] = _arun
    return type(cls.__name__, (cls,), namespace)
