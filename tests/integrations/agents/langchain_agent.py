"""A LangChain tool driven by a minimal tool-calling loop over the `openai` SDK (no langchain-openai):
LLM call -> guarded tool call -> LLM call. Run as `failcore run -- python langchain_agent.py BASE_URL`."""

from __future__ import annotations

import json
import sys

from langchain_core.tools import StructuredTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from notes_tool import PROMPT, TOOL_ARGS, save_note
from openai import OpenAI

from failcore import run
from failcore.integrations.langchain import guard_tools


def main(base_url: str) -> None:
    client = OpenAI(
        base_url=base_url,
        api_key="sk-test-not-a-real-key",
        max_retries=0,
        default_headers={"x-standin-tool-args": json.dumps(TOOL_ARGS)},
    )
    with run():
        tools = {t.name: t for t in guard_tools([StructuredTool.from_function(save_note)])}
        schemas = [convert_to_openai_tool(t) for t in tools.values()]
        messages: list[dict] = [{"role": "user", "content": PROMPT}]
        while True:
            reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=schemas)
            message = reply.choices[0].message
            if not message.tool_calls:
                print(message.content)
                return
            messages.append(message.model_dump(exclude_none=True))
            for call in message.tool_calls:
                tool_call = {
                    "type": "tool_call",
                    "id": call.id,
                    "name": call.function.name,
                    "args": json.loads(call.function.arguments),
                }
                result = tools[call.function.name].invoke(tool_call)  # a ToolMessage
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result.content})


if __name__ == "__main__":
    main(sys.argv[1])
