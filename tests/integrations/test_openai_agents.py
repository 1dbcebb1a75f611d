"""`failcore.integrations.openai_agents` with the real openai-agents SDK: a guarded FunctionTool keeps
its name, description and schema; each `on_invoke_tool(ctx, args_json)` is exactly one `tool` event with
the model's arguments; a write outside the sandbox is refused before it happens and the model is told
which rule refused it; a tool error the SDK turns into a message is still recorded FAIL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from agents import FunctionTool, function_tool
from agents.tool_context import ToolContext

from failcore import run
from failcore.integrations.openai_agents import (
    guard_function_tool,
    guard_function_tools,
    model_arguments,
    tell_model_blocked,
)
from tests.integrations.helpers import events_of, sandbox_policy


@function_tool
def get_weather(city: str, days: int = 1) -> str:
    """The weather forecast for a city."""
    return f"{city}: sunny for {days} day(s)"


@function_tool
async def lookup(order_id: int) -> dict[str, Any]:
    """Look an order up."""
    await asyncio.sleep(0)
    return {"order": order_id, "status": "shipped"}


def invoke(tool: FunctionTool, args: dict[str, Any] | str) -> Any:
    raw = args if isinstance(args, str) else json.dumps(args)
    ctx = ToolContext(context=None, tool_name=tool.name, tool_call_id="call_1", tool_arguments=raw)
    return asyncio.run(tool.on_invoke_tool(ctx, raw))


def test_guarded_function_tool_keeps_what_the_model_sees() -> None:
    for original in (get_weather, lookup):
        guarded = guard_function_tool(original)
        assert isinstance(guarded, FunctionTool) and guarded is not original
        assert (guarded.name, guarded.description) == (original.name, original.description)
        assert guarded.params_json_schema == original.params_json_schema
        assert guarded.strict_json_schema == original.strict_json_schema
        assert guard_function_tool(guarded) is guarded
        assert original.on_invoke_tool is not guarded.on_invoke_tool


def test_each_invocation_is_one_tool_event_with_the_models_arguments(tmp_path: Path) -> None:
    with run(tape=tmp_path / "tape"):
        weather, order = guard_function_tools([get_weather, lookup])
        assert invoke(weather, {"city": "Paris", "days": 2}) == "Paris: sunny for 2 day(s)"
        assert invoke(order, {"order_id": 7}) == {"order": 7, "status": "shipped"}
        invoke(get_weather, {"city": "Oslo", "days": 1})  # the unguarded original is not recorded
    events = events_of(tmp_path / "tape", "tool")
    assert [(e["action"], e["tool"]["args"], e["outcome"]) for e in events] == [
        ("get_weather", {"city": "Paris", "days": 2}, "ok"),
        ("lookup", {"order_id": 7}, "ok"),
    ]
    assert events[1]["tool"]["result"]["type"] == "json"


def test_blocked_write_is_refused_before_it_happens_and_the_model_is_told(tmp_path: Path) -> None:
    policy, sandbox = sandbox_policy(tmp_path)

    @function_tool
    def save(path: str, text: str) -> str:
        """Save a text to a file."""
        Path(path).write_text(text)
        return "saved"

    outside = sandbox / ".." / "outside.txt"
    with run(policy=policy, strict=True, tape=tmp_path / "tape"):
        guarded = guard_function_tool(save)
        assert invoke(guarded, {"path": str(sandbox / "in.txt"), "text": "ok"}) == "saved"
        answer = invoke(guarded, {"path": str(outside), "text": "hack"})
    # The refusal becomes the tool's answer to the model: which rule refused what, not a generic error.
    assert isinstance(answer, str) and "fs.write_outside_roots" in answer and "outside.txt" in answer
    assert (sandbox / "in.txt").read_text() == "ok" and not outside.exists()
    calls = events_of(tmp_path / "tape", "tool")
    assert [(e["action"], e["outcome"], e["rule"]) for e in calls] == [
        ("save", "ok", None),
        ("save", "BLOCKED", "fs.write_outside_roots"),
    ]


def test_a_failure_the_sdk_handles_is_recorded_fail_and_the_model_gets_its_message(tmp_path: Path) -> None:
    def own_message(ctx: Any, error: Exception) -> str:
        return f"sorry: {type(error).__name__}"

    @function_tool
    def flaky(text: str) -> str:
        """Fail on purpose."""
        raise RuntimeError("internal detail sk-not-for-the-model")

    @function_tool(failure_error_function=own_message)
    def flaky_own(text: str) -> str:
        """Fail on purpose, with the author's own message for the model."""
        raise ValueError("bad")

    @function_tool(failure_error_function=tell_model_blocked)
    def flaky_told(text: str) -> str:
        """Fail on purpose, with failcore's handler chosen explicitly."""
        raise OSError("disk")

    @function_tool(failure_error_function=None)
    def flaky_raises(text: str) -> str:
        """Fail on purpose; the SDK lets the error propagate."""
        raise KeyError("gone")

    with run(tape=tmp_path / "tape"):
        default = invoke(guard_function_tool(flaky), {"text": "a"})
        own = invoke(guard_function_tool(flaky_own), {"text": "b"})
        told = invoke(guard_function_tool(flaky_told), {"text": "b"})
        with pytest.raises(KeyError):
            invoke(guard_function_tool(flaky_raises), {"text": "c"})
        # The unguarded tool is untouched: the SDK's default message, nothing recorded.
        assert invoke(flaky, {"text": "d"}) == default
    # The model gets what the SDK (or the tool's author) would have told it, and nothing of the error.
    assert default == "An error occurred while running the tool. Please try again."
    assert own == "sorry: ValueError" and told == default
    calls = events_of(tmp_path / "tape", "tool")
    assert [(e["action"], e["outcome"], e["fail_reason"]) for e in calls] == [
        ("flaky", "FAIL", "tool_error"),
        ("flaky_own", "FAIL", "tool_error"),
        ("flaky_told", "FAIL", "tool_error"),
        ("flaky_raises", "FAIL", "tool_error"),
    ]
    assert "RuntimeError" in json.dumps(calls[0]) and "ValueError" in json.dumps(calls[1])


def test_arguments_that_are_not_a_json_object_are_recorded_as_given() -> None:
    assert model_arguments('{"city": "Paris"}') == {"city": "Paris"}
    assert model_arguments("") == {}
    assert model_arguments("[1, 2]") == {"input": [1, 2]}
    assert model_arguments("{not json") == {"input": "{not json"}


def test_argument_names_that_cannot_be_parameters_are_recorded_together(tmp_path: Path) -> None:
    @function_tool(strict_mode=False)
    def first(text: str) -> str:
        """Echo the text."""
        return text

    with run(tape=tmp_path / "tape"):
        # What a model may send for a schema it did not follow: the tool still gets it as sent.
        assert invoke(guard_function_tool(first), '{"text": "a"}') == "a"
        assert invoke(guard_function_tool(first), '{"text": "b", "class": 2}') == "b"
    events = events_of(tmp_path / "tape", "tool")
    assert [e["tool"]["args"] for e in events] == [{"text": "a"}, {"arguments": {"text": "b", "class": 2}}]


def test_not_a_function_tool_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"expects an agents\.FunctionTool"):
        guard_function_tool(lambda: None)  # type: ignore[arg-type]
