"""The providers' wire formats: the JSON documents and stream events OpenAI (Chat Completions,
Responses), Anthropic Messages, Gemini and Ollama send, and their error bodies. Pure functions and
frozen dataclasses; the handler frames and sends what they produce."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from failcore.demo.framing import sse_frame
from failcore.demo.replies import Reply, TokenUsage, new_id, split_fixed, split_words

SYSTEM_FINGERPRINT = "fp_standin"
ANTHROPIC_PARTIAL_OUTPUT_TOKENS = 3


def openai_chat_usage(usage: TokenUsage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input,
        "completion_tokens": usage.output,
        "total_tokens": usage.input + usage.output,
        "prompt_tokens_details": {"cached_tokens": usage.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


@dataclass(frozen=True)
class ChatCompletion:
    model: str
    reply: Reply
    usage: TokenUsage
    include_usage: bool = False
    id: str = field(default_factory=lambda: new_id("chatcmpl-"))
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.reply.is_tool_call else "stop"

    def document(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": self.reply.text,
            "refusal": None,
            "annotations": [],
        }
        if self.reply.tool_call:
            call = self.reply.tool_call
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
            ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason},
            ],
            "usage": openai_chat_usage(self.usage),
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def frames(self) -> Iterator[bytes]:
        call = self.reply.tool_call
        if call:
            opening = {
                "index": 0,
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            yield sse_frame(
                self._chunk({"role": "assistant", "content": None, "tool_calls": [opening], "refusal": None})
            )
            for piece in split_fixed(call.arguments):
                yield sse_frame(self._chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        else:
            yield sse_frame(self._chunk({"role": "assistant", "content": "", "refusal": None}))
            for piece in split_words(self.reply.text):
                yield sse_frame(self._chunk({"content": piece}))
        yield sse_frame(self._chunk({}, self.finish_reason))
        if self.include_usage:
            usage_chunk = self._chunk({})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = openai_chat_usage(self.usage)
            yield sse_frame(usage_chunk)
        yield sse_frame("[DONE]")


def responses_usage(usage: TokenUsage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input,
        "input_tokens_details": {"cached_tokens": usage.cached, "cache_write_tokens": usage.cache_write},
        "output_tokens": usage.output,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.input + usage.output,
    }


@dataclass(frozen=True)
class ResponsesResult:
    request: dict[str, Any]
    reply: Reply
    usage: TokenUsage
    id: str = field(default_factory=lambda: new_id("resp_"))
    item_id: str = field(default_factory=lambda: new_id("msg_"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def _item(self, done: bool) -> dict[str, Any]:
        status = "completed" if done else "in_progress"
        call = self.reply.tool_call
        if call:
            return {
                "type": "function_call",
                "id": "fc_" + self.item_id[4:],
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments if done else "",
                "status": status,
            }
        content = [self._part(self.reply.text)] if done else []
        return {
            "type": "message",
            "id": self.item_id,
            "status": status,
            "role": "assistant",
            "content": content,
        }

    @staticmethod
    def _part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def document(self, done: bool = True) -> dict[str, Any]:
        request = self.request
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": "completed" if done else "in_progress",
            "background": False,
            "completed_at": int(time.time()) if done else None,
            "error": None,
            "incomplete_details": None,
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": request["model"],
            "output": [self._item(done=True)] if done else [],
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "previous_response_id": request.get("previous_response_id"),
            "prompt_cache_key": None,
            "reasoning": {"effort": None, "summary": None},
            "safety_identifier": None,
            "service_tier": "default",
            "store": request.get("store", True),
            "temperature": request.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": request.get("tool_choice", "auto"),
            "tools": request.get("tools") or [],
            "top_logprobs": 0,
            "top_p": request.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": responses_usage(self.usage) if done else None,
            "user": None,
            "metadata": request.get("metadata") or {},
        }

    def _events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        yield "response.created", {"response": self.document(done=False)}
        yield "response.in_progress", {"response": self.document(done=False)}
        yield "response.output_item.added", {"output_index": 0, "item": self._item(done=False)}
        call = self.reply.tool_call
        if call:
            item_id = self._item(done=True)["id"]
            for piece in split_fixed(call.arguments):
                yield (
                    "response.function_call_arguments.delta",
                    {"item_id": item_id, "output_index": 0, "delta": piece},
                )
            yield (
                "response.function_call_arguments.done",
                {"item_id": item_id, "output_index": 0, "name": call.name, "arguments": call.arguments},
            )
        else:
            where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
            yield "response.content_part.added", {**where, "part": self._part("")}
            for piece in split_words(self.reply.text):
                yield "response.output_text.delta", {**where, "delta": piece, "logprobs": []}
            yield "response.output_text.done", {**where, "text": self.reply.text, "logprobs": []}
            yield "response.content_part.done", {**where, "part": self._part(self.reply.text)}
        yield "response.output_item.done", {"output_index": 0, "item": self._item(done=True)}
        yield "response.completed", {"response": self.document(done=True)}

    def frames(self) -> Iterator[bytes]:
        for sequence_number, (event_type, data) in enumerate(self._events()):
            yield sse_frame({"type": event_type, **data, "sequence_number": sequence_number}, event_type)


def anthropic_usage(usage: TokenUsage, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": usage.input,
        "cache_creation_input_tokens": usage.cache_write,
        "cache_read_input_tokens": usage.cached,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


@dataclass(frozen=True)
class AnthropicMessage:
    model: str
    reply: Reply
    usage: TokenUsage
    id: str = field(default_factory=lambda: new_id("msg_"))

    @property
    def stop_reason(self) -> str:
        return "tool_use" if self.reply.is_tool_call else "end_turn"

    def _block(self, done: bool) -> dict[str, Any]:
        call = self.reply.tool_call
        if call:
            return {
                "type": "tool_use",
                "id": call.call_id,
                "name": call.name,
                "input": json.loads(call.arguments) if done else {},
            }
        return {"type": "text", "text": self.reply.text if done else ""}

    def document(self, done: bool = True) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [self._block(done=True)] if done else [],
            "stop_reason": self.stop_reason if done else None,
            "stop_sequence": None,
            "usage": anthropic_usage(self.usage, self.usage.output if done else 1),
        }

    def _events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        yield "message_start", {"message": self.document(done=False)}
        yield "content_block_start", {"index": 0, "content_block": self._block(done=False)}
        yield "ping", {}
        call = self.reply.tool_call
        if call:
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in split_fixed(call.arguments)]
        else:
            deltas = [{"type": "text_delta", "text": p} for p in split_words(self.reply.text)]
        for delta in deltas:
            yield "content_block_delta", {"index": 0, "delta": delta}
        yield "content_block_stop", {"index": 0}
        stop = {"stop_reason": self.stop_reason, "stop_sequence": None}
        partial = min(ANTHROPIC_PARTIAL_OUTPUT_TOKENS, self.usage.output)
        for cumulative in (partial, self.usage.output):
            yield "message_delta", {"delta": stop, "usage": {"output_tokens": cumulative}}
        yield "message_stop", {}

    def frames(self) -> Iterator[bytes]:
        for event_type, data in self._events():
            yield sse_frame({"type": event_type, **data}, event_type)


def openai_error(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def anthropic_error(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def gemini_usage(usage: TokenUsage, output: int, final: bool) -> dict[str, Any]:
    thoughts = usage.reasoning if final else 0
    meta: dict[str, Any] = {
        "promptTokenCount": usage.input,
        "candidatesTokenCount": output - thoughts,
        "totalTokenCount": usage.input + output,
    }
    if usage.cached:
        meta["cachedContentTokenCount"] = usage.cached
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    return meta


@dataclass(frozen=True)
class GeminiResult:
    """Gemini counts: ``output`` includes ``reasoning`` (thoughts), reported beside the candidates."""

    model: str
    reply: Reply
    usage: TokenUsage

    def _chunk(self, text: str, output: int, final: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        if final:
            candidate["finishReason"] = "STOP"
        return {
            "candidates": [candidate],
            "usageMetadata": gemini_usage(self.usage, output, final),
            "modelVersion": self.model,
            "responseId": "standin-gemini",
        }

    def document(self) -> dict[str, Any]:
        return self._chunk(self.reply.text, self.usage.output, True)

    def chunks(self) -> list[dict[str, Any]]:
        words = split_words(self.reply.text) or [""]
        running = max(self.usage.output - self.usage.reasoning, 0)
        return [
            self._chunk(word, min(i + 1, running), i == len(words) - 1)
            if i < len(words) - 1
            else self._chunk(word, self.usage.output, True)
            for i, word in enumerate(words)
        ]


@dataclass(frozen=True)
class OllamaResult:
    model: str
    reply: Reply
    usage: TokenUsage
    chat: bool

    def _line(self, text: str, done: bool) -> dict[str, Any]:
        line: dict[str, Any] = {"model": self.model, "created_at": "2026-01-01T00:00:00Z"}
        if self.chat:
            line["message"] = {"role": "assistant", "content": text}
        else:
            line["response"] = text
        line["done"] = done
        if done:
            line |= {
                "done_reason": "stop",
                "prompt_eval_count": self.usage.input,
                "eval_count": self.usage.output,
            }
        return line

    def document(self) -> dict[str, Any]:
        return self._line(self.reply.text, True)

    def lines(self) -> list[bytes]:
        words = split_words(self.reply.text)
        out = [json.dumps(self._line(word, False)).encode() + b"\n" for word in words]
        return [*out, json.dumps(self._line("", True)).encode() + b"\n"]
