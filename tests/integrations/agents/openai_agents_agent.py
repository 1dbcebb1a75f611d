"""An OpenAI Agents SDK agent with one guarded function tool, on the Chat Completions model (or, with
`responses`, the SDK's default Responses model) pointed at the stand-in, tracing off (no internet).
Run as `failcore run -- python openai_agents_agent.py BASE_URL [chat|responses]`."""

from __future__ import annotations

import json
import sys

from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from notes_tool import PROMPT, TOOL_ARGS, save_note
from openai import AsyncOpenAI

from failcore import run
from failcore.integrations.openai_agents import guard_function_tool


def main(base_url: str, api: str) -> None:
    set_tracing_disabled(True)
    client = AsyncOpenAI(
        base_url=base_url,
        api_key="sk-test-not-a-real-key",
        max_retries=0,
        default_headers={"x-standin-tool-args": json.dumps(TOOL_ARGS)},
    )
    agent = Agent(
        name="notes",
        instructions="Save what the user asks you to remember.",
        tools=[guard_function_tool(function_tool(save_note))],
        model=(OpenAIResponsesModel if api == "responses" else OpenAIChatCompletionsModel)(
            model="gpt-4o-mini", openai_client=client
        ),
    )
    with run():
        result = Runner.run_sync(agent, PROMPT)
    print(result.final_output)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "chat")
