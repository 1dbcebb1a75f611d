"""Google Gemini generateContent / streamGenerateContent (JSON, a JSON array, or SSE with alt=sse)."""

from __future__ import annotations

import orjson

from failcore.llm.providers.base import Accumulator
from failcore.llm.typed import as_count, as_dict, as_list, as_text, sum_known


class GeminiGenerate(Accumulator):
    usage_key = b"usageMetadata"

    def __init__(self, keep_content: bool) -> None:
        super().__init__(keep_content)
        self._counts_known = False

    def handle_document(self, doc: object) -> None:
        if isinstance(doc, list):
            for chunk in doc:
                self.handle_event(None, chunk)
        else:
            self.handle_event(None, doc)
        self.done = True
        self.usage.usage_known = self._counts_known

    def handle_event(self, event: str | None, payload: object) -> None:
        chunk = as_dict(payload)
        self.set_model(chunk.get("modelVersion"))
        candidates = as_list(chunk.get("candidates"))
        for position, candidate in enumerate(candidates):
            candidate = as_dict(candidate)
            for part in as_list(as_dict(candidate.get("content")).get("parts")):
                part = as_dict(part)
                if "functionCall" in part:
                    self.tool_calls += 1
                    self.add_tool_input(orjson.dumps(as_dict(part["functionCall"]).get("args", {})).decode())
                elif position == 0 and not part.get("thought"):
                    text = as_text(part.get("text"))
                    if text is not None:
                        self.text.append(text)
            if position == 0:
                self.set_finish(candidate.get("finishReason"))
        usage = chunk.get("usageMetadata")
        if isinstance(usage, dict):
            self.apply_usage(usage)
        if self.finish_reason and isinstance(usage, dict):
            self.done = True
        # Every chunk carries running totals; only the one with the finish reason is final.
        self.usage.usage_known = self._counts_known and self.done

    def apply_usage(self, usage: dict) -> None:
        prompt = as_count(usage.get("promptTokenCount"))
        candidates = as_count(usage.get("candidatesTokenCount"))
        thoughts = as_count(usage.get("thoughtsTokenCount"))
        tool_prompt = as_count(usage.get("toolUsePromptTokenCount"))
        if prompt is None and candidates is None:
            return
        total = as_count(usage.get("totalTokenCount"))
        input_tokens = sum_known(prompt, tool_prompt)
        # thoughtsTokenCount is reported beside candidatesTokenCount but billed as output.
        output_tokens = sum_known(candidates, thoughts)
        if output_tokens is None and total is not None and input_tokens is not None and total >= input_tokens:
            output_tokens = total - input_tokens  # e.g. a blocked prompt: nothing generated
        self.usage.input_tokens = input_tokens
        self.usage.output_tokens = output_tokens
        self.usage.total_tokens = total if total is not None else sum_known(input_tokens, output_tokens)
        self.usage.cached_input_tokens = as_count(usage.get("cachedContentTokenCount"))
        self.usage.reasoning_tokens = thoughts
        self._counts_known = input_tokens is not None and output_tokens is not None
