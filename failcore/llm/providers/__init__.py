"""One accumulator per LLM API, by provider family (openai, anthropic, gemini, ollama), and how a decoded
frame (failcore.framing) is fed to one. failcore.llm.usage is the entry point that uses them."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from failcore.framing import Frame
from failcore.llm.providers.anthropic import AnthropicMessages
from failcore.llm.providers.base import Accumulator, salvage_object
from failcore.llm.providers.bedrock import BedrockConverse, BedrockInvoke, MessageBatches
from failcore.llm.providers.gemini import GeminiGenerate
from failcore.llm.providers.ollama import OllamaNative
from failcore.llm.providers.openai import ChatCompletions, Responses
from failcore.llm.typed import loads_or_none

ACCUMULATORS: dict[str, Callable[[bool], Accumulator]] = {
    "chat_completions": ChatCompletions,
    "completions": ChatCompletions,
    "responses": Responses,
    "messages": AnthropicMessages,
    "gemini_generate": GeminiGenerate,
    "ollama_chat": OllamaNative,
    "ollama_generate": OllamaNative,
    "bedrock_converse": BedrockConverse,
    "bedrock_invoke": BedrockInvoke,
    "message_batches": MessageBatches,
}


def new_accumulator(api: str, keep_content: bool) -> Accumulator:
    factory = ACCUMULATORS.get(api)
    if factory is None:
        raise ValueError(f"unsupported LLM api {api!r}")
    return factory(keep_content)


def feed_frame(acc: Accumulator, frame: Frame) -> None:
    if frame.tail is not None:
        usage = salvage_object(frame.tail, acc.usage_key)
        if usage is not None:
            acc.apply_usage(usage)
        return
    if frame.data == b"[DONE]":
        acc.handle_done_marker()
        return
    try:  # (loads_or_none, less a call for the JSON orjson reads)
        payload = orjson.loads(frame.data)
    except orjson.JSONDecodeError:
        payload = loads_or_none(frame.data)
    if payload is not None:
        acc.handle_event(frame.event, payload)


def finish_stream(acc: Accumulator) -> None:
    finalize = getattr(acc, "finalize_stream", None)
    if finalize is not None:
        finalize()
