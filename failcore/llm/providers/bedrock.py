"""AWS Bedrock runtime (Converse and InvokeModel) and Anthropic Message Batches, for metering.

Converse answers `{"output": {"message": {"content": [{"text"}|{"toolUse"}]}}, "stopReason", "usage":
{"inputTokens", "outputTokens", "totalTokens", "cacheReadInputTokens", "cacheWriteInputTokens"}}`
(inputTokens without the cache parts, as Anthropic counts). InvokeModel answers in the model family's own
format: Anthropic Messages (`usage.input_tokens`), Amazon Nova (Converse's `usage`), Meta Llama
(`prompt_token_count`, `generation_token_count`), Amazon Titan (`inputTextTokenCount`,
`results[].tokenCount`); any other family reports no usage and is charged an estimate. The streaming
operations (`…-stream`) answer in AWS's binary event-stream framing, which carries no readable usage here:
they are charged an estimate too (failcore.budgetcharge), as are batches, whose usage comes days later.
"""

from __future__ import annotations

import orjson

from failcore.llm.providers.anthropic import AnthropicMessages
from failcore.llm.providers.base import Accumulator
from failcore.llm.typed import as_count, as_dict, as_list, as_text, sum_known


def _set_usage(
    acc: Accumulator, uncached: int | None, output: int | None, read: int | None, write: int | None
) -> None:
    if uncached is None or output is None:
        return
    acc.usage.input_tokens = uncached + (read or 0) + (write or 0)
    acc.usage.output_tokens = output
    acc.usage.total_tokens = sum_known(acc.usage.input_tokens, output)
    acc.usage.cached_input_tokens = read
    acc.usage.cache_write_tokens = write
    acc.usage.usage_known = True


def _converse_usage(acc: Accumulator, usage: dict) -> None:
    _set_usage(
        acc,
        as_count(usage.get("inputTokens")),
        as_count(usage.get("outputTokens")),
        as_count(usage.get("cacheReadInputTokens")),
        as_count(usage.get("cacheWriteInputTokens")),
    )


def _converse_message(acc: Accumulator, message: dict) -> None:
    for block in as_list(message.get("content")):
        block = as_dict(block)
        if "text" in block:
            acc.text.append(as_text(block.get("text")) or "")
        elif "toolUse" in block:
            acc.tool_calls += 1
            tool = as_dict(block.get("toolUse"))
            if "input" in tool:
                acc.add_tool_input(orjson.dumps(tool["input"]).decode())


class BedrockConverse(Accumulator):
    def handle_document(self, doc: object) -> None:
        document = as_dict(doc)
        _converse_message(self, as_dict(as_dict(document.get("output")).get("message")))
        self.set_finish(document.get("stopReason"))
        self.apply_usage(as_dict(document.get("usage")))
        self.done = True

    def handle_event(self, event: str | None, payload: object) -> None:
        """ConverseStream's events, when a gateway re-frames them as SSE or JSON lines."""
        data = as_dict(payload)
        delta = as_dict(as_dict(data.get("contentBlockDelta")).get("delta"))
        if "text" in delta:
            self.text.append(as_text(delta.get("text")) or "")
        stop = as_dict(data.get("messageStop"))
        if stop:
            self.set_finish(stop.get("stopReason"))
        metadata = as_dict(data.get("metadata"))
        if metadata:
            self.apply_usage(as_dict(metadata.get("usage")))
            self.done = True

    def apply_usage(self, usage: dict) -> None:
        _converse_usage(self, usage)


class BedrockInvoke(AnthropicMessages):
    """InvokeModel: Anthropic's Messages on Bedrock, or another family's own document."""

    def handle_document(self, doc: object) -> None:
        document = as_dict(doc)
        usage = as_dict(document.get("usage"))
        if "input_tokens" in usage or document.get("type") == "message":
            super().handle_document(document)
            return
        self.done = True
        if "inputTokens" in usage:  # Amazon Nova: Converse's shape
            _converse_message(self, as_dict(as_dict(document.get("output")).get("message")))
            self.set_finish(document.get("stopReason"))
            _converse_usage(self, usage)
        elif "prompt_token_count" in document:  # Meta Llama
            self.text.append(as_text(document.get("generation")) or "")
            self.set_finish(document.get("stop_reason"))
            _set_usage(
                self,
                as_count(document.get("prompt_token_count")),
                as_count(document.get("generation_token_count")),
                None,
                None,
            )
        elif "inputTextTokenCount" in document:  # Amazon Titan Text
            results = [as_dict(r) for r in as_list(document.get("results"))]
            for result in results:
                self.text.append(as_text(result.get("outputText")) or "")
            counts = [as_count(r.get("tokenCount")) for r in results]
            output = None if not counts or None in counts else sum(c or 0 for c in counts)
            _set_usage(self, as_count(document.get("inputTextTokenCount")), output, None, None)


class MessageBatches(Accumulator):
    """A Message Batch's creation answer (`{"type": "message_batch", "request_counts"}`) has no usage:
    budgets charge the batch from its request (failcore.budgetcharge.batch_estimate)."""

    def handle_document(self, doc: object) -> None:
        self.done = True

    def handle_event(self, event: str | None, payload: object) -> None:
        return None

    def apply_usage(self, usage: dict) -> None:
        return None
