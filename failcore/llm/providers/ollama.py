"""Ollama's native API (/api/chat, /api/generate), as JSON or NDJSON streams."""

from __future__ import annotations

import orjson

from failcore.llm.providers.base import Accumulator
from failcore.llm.typed import as_count, as_dict, as_list, as_text, sum_known


class OllamaNative(Accumulator):
    usage_key = b"eval_count"

    def handle_document(self, doc: object) -> None:
        self.handle_event(None, doc)
        self.done = True

    def handle_event(self, event: str | None, payload: object) -> None:
        chunk = as_dict(payload)
        self.set_model(chunk.get("model"))
        message = as_dict(chunk.get("message"))
        text = as_text(message.get("content")) if message else as_text(chunk.get("response"))
        if text:
            self.text.append(text)
        for call in as_list(message.get("tool_calls")):
            self.tool_calls += 1
            arguments = as_dict(call).get("function", {})
            self.add_tool_input(orjson.dumps(as_dict(arguments).get("arguments", {})).decode())
        if chunk.get("done") is True:
            self.set_finish(chunk.get("done_reason") or "stop")
            self.apply_usage(chunk)
            self.done = True
        elif "error" in chunk:
            self.done = self.errored = True

    def apply_usage(self, usage: dict) -> None:
        prompt = as_count(usage.get("prompt_eval_count"))
        completion = as_count(usage.get("eval_count"))
        if completion is None:
            return
        self.usage.input_tokens = prompt
        self.usage.output_tokens = completion
        self.usage.total_tokens = sum_known(prompt, completion)
        self.usage.usage_known = prompt is not None
