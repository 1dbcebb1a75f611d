"""`failcore.integrations.langchain` with the real langchain-core: a guarded tool is the same tool to
LangChain (name, description, argument schema, injected config) and each invoke/ainvoke is exactly one
`tool` event holding the model's arguments; a write outside the sandbox is refused before it happens."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, InjectedToolArg, StructuredTool, Tool, tool
from langchain_core.utils.function_calling import convert_to_openai_tool

from failcore import Blocked, run
from failcore.integrations.langchain import guard_tool, guard_tools
from tests.integrations.helpers import events_of, sandbox_policy


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
async def tag(text: str, config: RunnableConfig) -> str:
    """Tag a text with the run's first tag."""
    return f"{config['tags'][0]}:{text}"


class Echo(BaseTool):
    """A class-based tool with its own async body."""

    name: str = "echo"
    description: str = "Echo a text back."

    def _run(self, text: str, run_manager: Any = None) -> str:
        assert run_manager is not None  # LangChain still injects it: the signature was kept
        return f"echo {text}"

    async def _arun(self, text: str, run_manager: Any = None) -> str:
        return f"async echo {text}"


def test_guarded_tool_is_the_same_tool_to_langchain() -> None:
    for original in (add, tag, Echo()):
        guarded = guard_tool(original)
        assert (guarded.name, guarded.description) == (original.name, original.description)
        assert guarded.args == original.args
        assert convert_to_openai_tool(guarded) == convert_to_openai_tool(original)
        assert guard_tool(guarded) is guarded  # guarding twice would record every call twice
    assert add.metadata is None  # the original is left as it was


def test_each_invoke_and_ainvoke_is_one_tool_event_with_the_models_arguments(tmp_path: Path) -> None:
    with run(tape=tmp_path / "tape"):
        guarded_add, guarded_tag, guarded_echo = guard_tools([add, tag, Echo()])
        assert guarded_add.invoke({"a": 1, "b": 2}) == 3
        assert asyncio.run(guarded_add.ainvoke({"a": 3, "b": 4})) == 7  # no coroutine: run in a thread
        call = {"type": "tool_call", "id": "call_1", "name": "add", "args": {"a": 5, "b": 6}}
        message = guarded_add.invoke(call)
        assert isinstance(message, ToolMessage) and message.content == "11"
        assert asyncio.run(guarded_tag.ainvoke({"text": "hi"}, {"tags": ["t1"]})) == "t1:hi"
        assert guarded_echo.invoke("one") == "echo one"
        assert asyncio.run(guarded_echo.ainvoke({"text": "two"})) == "async echo two"
        add.invoke({"a": 0, "b": 0})  # the unguarded original is not recorded
    events = events_of(tmp_path / "tape", "tool")
    assert [(e["action"], e["tool"]["args"], e["tool"]["result"]["summary"]) for e in events] == [
        ("add", {"a": 1, "b": 2}, "3"),
        ("add", {"a": 3, "b": 4}, "7"),
        ("add", {"a": 5, "b": 6}, "11"),
        ("tag", {"text": "hi"}, "t1:hi"),  # the injected RunnableConfig is not an argument
        ("echo", {"text": "one"}, "echo one"),
        ("echo", {"text": "two"}, "async echo two"),
    ]
    assert {e["outcome"] for e in events} == {"ok"}


def test_single_input_tool_records_its_input(tmp_path: Path) -> None:
    shout = Tool(name="shout", func=lambda query: query.upper(), description="Shout the query.")
    with run(tape=tmp_path / "tape"):
        assert guard_tool(shout).invoke("hello") == "HELLO"
    (event,) = events_of(tmp_path / "tape", "tool")
    assert event["action"] == "shout" and list(event["tool"]["args"].values()) == ["hello"]


def test_injected_tool_arguments_reach_the_tool_but_are_not_the_models(tmp_path: Path) -> None:
    @tool
    def whoami(greeting: str, user_id: Annotated[str, InjectedToolArg]) -> str:
        """Greet the current user."""
        return f"{greeting} {user_id}"

    guarded = guard_tool(whoami)
    assert guarded.tool_call_schema.model_json_schema() == whoami.tool_call_schema.model_json_schema()
    with run(tape=tmp_path / "tape"):
        assert guarded.invoke({"greeting": "hi", "user_id": "u-1"}) == "hi u-1"
    (event,) = events_of(tmp_path / "tape", "tool")
    assert event["tool"]["args"] == {"greeting": "hi"}


def test_write_outside_the_sandbox_is_blocked_before_it_happens(tmp_path: Path) -> None:
    policy, sandbox = sandbox_policy(tmp_path)

    def save(path: str, text: str) -> str:
        """Save a text to a file."""
        Path(path).write_text(text)
        return "saved"

    outside = sandbox / ".." / "outside.txt"
    with run(policy=policy, strict=True, tape=tmp_path / "tape"):
        guarded = guard_tool(StructuredTool.from_function(save))
        assert guarded.invoke({"path": str(sandbox / "in.txt"), "text": "ok"}) == "saved"
        with pytest.raises(Blocked):
            guarded.invoke({"path": str(outside), "text": "hack"})
    assert (sandbox / "in.txt").read_text() == "ok" and not outside.exists()
    calls = events_of(tmp_path / "tape", "tool")
    assert [(e["action"], e["outcome"]) for e in calls] == [("save", "ok"), ("save", "BLOCKED")]
    fs = events_of(tmp_path / "tape", "fs")
    assert [(e["call"], e["outcome"]) for e in fs] == [
        (calls[0]["call"], "ok"),
        (calls[1]["call"], "BLOCKED"),
    ]
    assert fs[1]["rule"] == "fs.write_outside_roots"


def test_not_a_langchain_tool_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="expects a LangChain BaseTool"):
        guard_tool(add.func)  # type: ignore[arg-type]
