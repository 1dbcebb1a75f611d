"""Anthropic Messages, as a JSON document or an SSE stream."""

from __future__ import annotations

import orjson

from failcore.llm.providers.base import Accumulator
from failcore.llm.typed import as_count, as_dict, as_list, as_text, sum_known

_ANTHROPIC_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


class AnthropicMessages(Accumulator):
    def __init__(self, keep_content: bool) -> None:
        super().__init__(keep_content)
        self._raw: dict[str, int] = {}
        self._tool_blocks: dict[int, list[str]] = {}
        self._final_usage_seen = False

    def handle_document(self, doc: object) -> None:
        message = as_dict(doc)
        self.set_model(message.get("model"))
        self.set_finish(message.get("stop_reason"))
        for block in as_list(message.get("content")):
            block = as_dict(block)
            if block.get("type") == "text":
                self.text.append(as_text(block.get("text")) or "")
            elif block.get("type") == "tool_use":
                self.tool_calls += 1
                if "input" in block:
                    self.add_tool_input(orjson.dumps(block["input"]).decode())
        self._final_usage_seen = True
        self.apply_usage(as_dict(message.get("usage")))
        self.done = True

    def handle_event(self, event: str | None, payload: object) -> None:
        data = payload if isinstance(payload, dict) else {}
        kind = data.get("type")
        if not isinstance(kind, str) or not kind:
            kind = event
        if kind == "content_block_delta":  # most events: a piece of text
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                self.text.append(text if isinstance(text, str) else "")
                return
        self._other_event(kind, data)

    def _other_event(self, kind: str | None, data: dict) -> None:
        if kind == "message_start":
            message = as_dict(data.get("message"))
            self.set_model(message.get("model"))
            self.apply_usage(as_dict(message.get("usage")))
        elif kind == "content_block_start":
            block = as_dict(data.get("content_block"))
            if block.get("type") == "tool_use":
                self.tool_calls += 1
                self.other_chars += len(as_text(block.get("name")) or "")
                self._tool_blocks[as_count(data.get("index")) or 0] = []
            elif block.get("type") == "text":
                self.text.append(as_text(block.get("text")) or "")
        elif kind == "content_block_delta":
            delta = as_dict(data.get("delta"))
            delta_kind = delta.get("type")  # (a text_delta was read by handle_event)
            if delta_kind == "input_json_delta":
                partial = as_text(delta.get("partial_json"))
                self.other_chars += len(partial or "")
                parts = self._tool_blocks.get(as_count(data.get("index")) or 0) if self.keep_content else None
                if parts is not None and partial:
                    parts.append(partial)
            elif delta_kind == "thinking_delta":
                self.other_chars += len(as_text(delta.get("thinking")) or "")
        elif kind == "content_block_stop":
            parts = self._tool_blocks.pop(as_count(data.get("index")) or 0, None)
            if parts is not None:
                self.add_tool_input("".join(parts) or "{}")
        elif kind == "message_delta":
            self.set_finish(as_dict(data.get("delta")).get("stop_reason"))
            usage = data.get("usage")
            if isinstance(usage, dict):
                # message_start's usage is provisional (output_tokens ~1); message_delta's is the final tally.
                self._final_usage_seen = True
                self.apply_usage(usage)
        elif kind in ("message_stop", "error"):
            self.done = True
            self.errored = kind == "error"

    def drop_content(self) -> None:
        super().drop_content()
        for parts in self._tool_blocks.values():
            parts.clear()

    def finalize_stream(self) -> None:
        # Blocks never closed (truncated stream) are still evidence of what the model was sending.
        for index in sorted(self._tool_blocks):
            self.add_tool_input("".join(self._tool_blocks[index]))
        self._tool_blocks.clear()

    def apply_usage(self, usage: dict) -> None:
        # message_delta usage is cumulative: the latest value of each field replaces, never adds.
        for name in _ANTHROPIC_USAGE_FIELDS:
            value = as_count(usage.get(name))
            if value is not None:
                self._raw[name] = value
        thinking = as_count(as_dict(usage.get("output_tokens_details")).get("thinking_tokens"))
        if thinking is not None:
            self._raw["thinking_tokens"] = thinking
        one_hour = as_count(as_dict(usage.get("cache_creation")).get("ephemeral_1h_input_tokens"))
        if one_hour is not None:
            self._raw["cache_write_1h_tokens"] = one_hour
        if "input_tokens" not in self._raw and "output_tokens" not in self._raw:
            return
        uncached = self._raw.get("input_tokens")
        read = self._raw.get("cache_read_input_tokens")
        write = self._raw.get("cache_creation_input_tokens")
        self.usage.input_tokens = None if uncached is None else uncached + (read or 0) + (write or 0)
        self.usage.output_tokens = self._raw.get("output_tokens")
        self.usage.total_tokens = sum_known(self.usage.input_tokens, self.usage.output_tokens)
        self.usage.cached_input_tokens = read
        self.usage.cache_write_tokens = write
        one_hour = self._raw.get("cache_write_1h_tokens")
        self.usage.cache_write_1h_tokens = min(one_hour, write or 0) if one_hour is not None else None
        self.usage.reasoning_tokens = self._raw.get("thinking_tokens")
        both_known = self.usage.input_tokens is not None and self.usage.output_tokens is not None
        self.usage.usage_known = both_known and self._final_usage_seen
