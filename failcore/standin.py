"""Local HTTPS stand-in for LLM providers and generic test endpoints.

``StandIn`` runs a real TLS server on loopback (self-signed certificate generated with
``cryptography``) that speaks the providers' wire formats closely enough for the official
``openai`` and ``anthropic`` SDKs, httpx and curl to talk to it unmodified.  It backs
failcore's end-to-end tests, the offline demo (``failcore sample``) and the benchmarks.

    with StandIn() as upstream:
        ctx = ssl.create_default_context(cafile=str(upstream.ca_path))
        client = openai.OpenAI(base_url=upstream.url + "/v1", api_key="x",
                               http_client=httpx.Client(verify=ctx))

Every request is recorded (``StandIn.requests``) before it is answered.

Provider endpoints
------------------
``POST /v1/chat/completions`` -- OpenAI Chat Completions.  JSON ``chat.completion`` or, with
    ``"stream": true``, ``text/event-stream`` of ``chat.completion.chunk`` objects: a first
    delta carrying the role, the reply word by word, a final chunk with ``finish_reason``,
    then -- only if ``stream_options.include_usage`` is true -- a chunk with ``choices: []``
    and ``usage``, then ``data: [DONE]``.
``POST /v1/responses`` -- OpenAI Responses API.  JSON ``response`` object or SSE with
    ``event: <type>`` frames: response.created, response.in_progress,
    response.output_item.added, response.content_part.added, response.output_text.delta (one
    per word), response.output_text.done, response.content_part.done,
    response.output_item.done, response.completed (full response including usage).  Each
    ``data`` carries ``type`` and an increasing ``sequence_number``.  Function calls stream as
    output_item.added, response.function_call_arguments.delta (several),
    response.function_call_arguments.done, output_item.done.
``POST /v1/messages`` -- Anthropic Messages.  JSON ``message`` or SSE: message_start
    (usage with the input tokens and ``output_tokens: 1``), content_block_start, ping,
    content_block_delta (text_delta per word / input_json_delta pieces), content_block_stop,
    TWO message_delta events whose ``usage.output_tokens`` are cumulative (first
    ``min(3, output)``, then the final total -- consumers must keep the latest, never sum),
    message_stop.

Replies are deterministic:

* text: ``"Echo: <last user text>"``;
* tools: when the request declares function tools and the conversation carries no tool result
  yet, the answer is a call of the FIRST function tool (finish/stop reason ``tool_calls`` /
  ``tool_use``).  Its arguments fill every property of the tool's JSON schema: strings get the
  last user text, integers/numbers 1, booleans true, arrays [], objects {};
* once the conversation carries a tool result (chat ``role: tool`` as last message, Responses
  ``function_call_output`` input item, Anthropic ``tool_result`` block in the last user
  message) the answer is ``"Tool said: <result text>"``.

Token usage is fixed per endpoint (``DEFAULT_USAGE``) and reported verbatim:
``input`` -> prompt_tokens / input_tokens, ``output`` -> completion_tokens / output_tokens,
``cached`` -> prompt_tokens_details.cached_tokens / input_tokens_details.cached_tokens /
cache_read_input_tokens, ``cache_write`` -> cache_creation_input_tokens (and the Responses
``cache_write_tokens``), ``reasoning`` -> completion_tokens_details.reasoning_tokens /
output_tokens_details.reasoning_tokens; OpenAI totals are ``input + output``.

Per-request control headers (all optional):

* ``x-standin-usage: {"input":120,"output":30,"cached":20,"cache_write":5,"reasoning":4}``
  -- any subset; missing keys keep the endpoint default (0 for the detail counters);
* ``x-standin-reply: <text>`` -- replaces the text reply (tool calls are unaffected);
* ``x-standin-tool-args: {json object}`` -- replaces the generated tool-call arguments;
* ``x-standin-gap: 0.5`` -- seconds between SSE events (default: the server's ``sse_gap``);
* ``x-standin-linger: 0.5`` -- seconds an SSE stream stays open after its final event before the
  HTTP message ends (a client that stops reading at the final event hangs up in between);
* ``x-standin-framing: length | chunked`` -- how the answer is framed: with a Content-Length, or
  ``Transfer-Encoding: chunked`` without one (how OpenAI and Anthropic send JSON). Default: JSON with
  a length, streams chunked;
* ``x-standin-encoding: gzip | deflate | br | zstd | identity`` -- Content-Encoding of the answer
  (a stream is compressed event by event, each flushed as it is sent).

``POST /v1beta/models/<model>:generateContent`` / ``:streamGenerateContent`` -- Gemini. JSON
    ``GenerateContentResponse``; the stream is SSE with ``?alt=sse``, else a JSON array sent piece by
    piece (how the Gemini API streams without alt=sse). Each chunk carries one word and running
    ``usageMetadata``; the last one the ``finishReason``. ``cached`` -> cachedContentTokenCount,
    ``reasoning`` -> thoughtsTokenCount (reported beside candidatesTokenCount, as Gemini does).
``POST /api/chat``, ``/api/generate`` -- Ollama's native API: NDJSON stream unless ``"stream": false``,
    final line ``done: true`` with ``prompt_eval_count`` / ``eval_count``.

Malformed bodies or control headers get a 400 in the provider's error format.

Generic endpoints
-----------------
``GET /sse?n=3&gap=0.5`` -- ``data: event i`` for i = 1..n, ``gap`` seconds apart.
``GET /json`` -- a small JSON document (``SAMPLE_DOCUMENT``).
``POST|PUT|PATCH|DELETE|GET /echo`` -- JSON with method, path, headers, ``body`` (text, or
    null if not UTF-8) and ``body_base64``.
``GET /gzip``, ``/deflate``, ``/br``, ``/zstd`` -- ``SAMPLE_DOCUMENT`` compressed with that
    Content-Encoding (deflate is the zlib format HTTP specifies).
``GET /big?mb=50`` -- that many MiB of a repeating pattern, produced piece by piece; add
    ``&chunked=1`` for chunked transfer without Content-Length.
``GET /binary`` -- ``BINARY_BODY`` (all byte values, NULs included), application/octet-stream.
``GET /status/<code>`` -- that status (200..599); 4xx/5xx carry a JSON error body
    ``{"error": {"code", "message"}}``, 204/304 no body, others ``{"status", "reason"}``.
``GET /slow?seconds=2`` -- answers after sleeping.
``GET /drop`` -- closes the connection without answering.
``GET /ws`` -- WebSocket echo of text and binary messages; answers pings and closes cleanly.
Anything else -- 404 JSON.

``tls=False`` serves the same endpoints over plain HTTP.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import gzip
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import socketserver
import ssl
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import brotli
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from failcore.compat import zstd

log = logging.getLogger(__name__)

SYSTEM_FINGERPRINT = "fp_standin"
SAMPLE_DOCUMENT: dict[str, Any] = {
    "service": "failcore-standin",
    "items": [{"id": i, "name": f"item-{i}", "tags": ["alpha", "beta"]} for i in range(1, 21)],
}
BINARY_BODY = bytes(range(256)) * 4
ANTHROPIC_PARTIAL_OUTPUT_TOKENS = 3
MAX_REQUEST_BODY = 256 * 1024 * 1024
MAX_BIG_MB = 4096.0
MAX_SLOW_SECONDS = 300.0
MAX_SSE_EVENTS = 100_000
BIG_PIECE = bytes(range(32, 127)) * 690  # ~64 KiB of printable bytes, a recognisable pattern
IDLE_CONNECTION_TIMEOUT = 120.0
TLS_HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class TokenUsage:
    input: int
    output: int
    cached: int = 0
    cache_write: int = 0
    reasoning: int = 0


DEFAULT_USAGE: dict[str, TokenUsage] = {
    "chat": TokenUsage(input=17, output=9),
    "responses": TokenUsage(input=19, output=11),
    "messages": TokenUsage(input=23, output=13),
    "gemini": TokenUsage(input=29, output=15),
    "ollama": TokenUsage(input=31, output=17),
}
FRAMINGS = ("length", "chunked")
ENCODINGS = ("identity", "gzip", "deflate", "br", "zstd")


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    ts: float

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((value for key, value in self.headers if key.lower() == lowered), None)


class StandInError(ValueError):
    """A request the stand-in refuses with a 400 in the provider's error format."""


# ---------------------------------------------------------------------------------------------
# Reply planning (pure functions)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str
    call_id: str


@dataclass(frozen=True)
class Reply:
    text: str = ""
    tool_call: ToolCall | None = None

    @property
    def is_tool_call(self) -> bool:
        return self.tool_call is not None


@dataclass(frozen=True)
class ReplyOptions:
    """Per-request knobs read from the ``x-standin-*`` headers."""

    usage: TokenUsage
    reply_text: str | None = None
    tool_args: dict[str, Any] | None = None
    gap: float = 0.0
    linger: float = 0.0
    framing: str | None = None
    encoding: str = "identity"


def parse_choice(raw: str | None, allowed: tuple[str, ...], what: str) -> str | None:
    if raw is None:
        return None
    value = raw.strip().lower()
    if value not in allowed:
        raise StandInError(f"{what} must be one of {', '.join(allowed)}, not {raw!r}")
    return value


def parse_usage_header(raw: str | None, default: TokenUsage) -> TokenUsage:
    if raw is None:
        return default
    try:
        values = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StandInError(f"x-standin-usage is not JSON: {exc}") from exc
    if not isinstance(values, dict):
        raise StandInError("x-standin-usage must be a JSON object")
    allowed = {"input", "output", "cached", "cache_write", "reasoning"}
    unknown = set(values) - allowed
    if unknown:
        raise StandInError(f"x-standin-usage has unknown keys: {sorted(unknown)}")
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise StandInError(f"x-standin-usage.{key} must be a non-negative integer")
    return replace(default, **values)


def parse_seconds(raw: str | None, default: float, what: str = "gap") -> float:
    if raw is None:
        return default
    try:
        seconds = float(raw)
    except ValueError as exc:
        raise StandInError(f"{what} is not a number: {raw!r}") from exc
    if not 0.0 <= seconds <= MAX_SLOW_SECONDS:
        raise StandInError(f"{what} out of range: {seconds}")
    return seconds


def parse_tool_args_header(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        args = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StandInError(f"x-standin-tool-args is not JSON: {exc}") from exc
    if not isinstance(args, dict):
        raise StandInError("x-standin-tool-args must be a JSON object")
    return args


def read_options(headers: Message, endpoint: str, default_gap: float) -> ReplyOptions:
    return ReplyOptions(
        usage=parse_usage_header(headers.get("x-standin-usage"), DEFAULT_USAGE[endpoint]),
        reply_text=headers.get("x-standin-reply"),
        tool_args=parse_tool_args_header(headers.get("x-standin-tool-args")),
        gap=parse_seconds(headers.get("x-standin-gap"), default_gap),
        linger=parse_seconds(headers.get("x-standin-linger"), 0.0, "linger"),
        framing=parse_choice(headers.get("x-standin-framing"), FRAMINGS, "x-standin-framing"),
        encoding=parse_choice(headers.get("x-standin-encoding"), ENCODINGS, "x-standin-encoding")
        or "identity",
    )


def split_words(text: str) -> list[str]:
    """Word-sized pieces that concatenate back to ``text`` exactly (whitespace leads a word)."""
    return re.findall(r"\s*\S+|\s+$", text)


def split_fixed(text: str, size: int = 8) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def content_text(content: Any) -> str:
    """Text of a message content that is either a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [content_text(part) for part in content]
        return " ".join(text for text in texts if text)
    if isinstance(content, dict):
        if isinstance(content.get("text"), str):
            return content["text"]
        if "content" in content:
            return content_text(content["content"])
        if isinstance(content.get("output"), str):
            return content["output"]
    return ""


def arguments_for_schema(schema: Any, user_text: str) -> dict[str, Any]:
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return {}
    by_type: dict[str, Any] = {"integer": 1, "number": 1, "boolean": True, "array": [], "object": {}}
    args: dict[str, Any] = {}
    for name, spec in properties.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        args[str(name)] = by_type.get(kind, user_text) if isinstance(kind, str) else user_text
    return args


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def _tool_call(name: str, schema: Any, user_text: str, options: ReplyOptions, id_prefix: str) -> Reply:
    args = options.tool_args if options.tool_args is not None else arguments_for_schema(schema, user_text)
    return Reply(tool_call=ToolCall(name=name, arguments=json.dumps(args), call_id=_new_id(id_prefix)))


def _text_reply(default_text: str, options: ReplyOptions) -> Reply:
    return Reply(text=options.reply_text if options.reply_text is not None else default_text)


def _dict_or_empty(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _require_dict(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise StandInError("request body must be a JSON object")
    if not isinstance(body.get("model"), str):
        raise StandInError("'model' is required and must be a string")
    return body


def _last_with_role(messages: list[Any], role: str) -> dict[str, Any] | None:
    return next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == role), None)


def plan_chat_reply(body: dict[str, Any], options: ReplyOptions) -> Reply:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise StandInError("'messages' must be a non-empty list")
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    if last.get("role") == "tool":
        return _text_reply("Tool said: " + content_text(last.get("content")), options)
    user = _last_with_role(messages, "user")
    user_text = content_text(user.get("content")) if user else ""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    if tools:
        function = tools[0].get("function") or {}
        return _tool_call(
            str(function.get("name", "")), function.get("parameters"), user_text, options, "call_"
        )
    return _text_reply("Echo: " + user_text, options)


def plan_responses_reply(body: dict[str, Any], options: ReplyOptions) -> Reply:
    raw_input = body.get("input")
    if isinstance(raw_input, str):
        items: list[Any] = [{"role": "user", "content": raw_input}]
    elif isinstance(raw_input, list):
        items = raw_input
    else:
        raise StandInError("'input' must be a string or a list")
    outputs = [i for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"]
    if outputs:
        return _text_reply("Tool said: " + content_text(outputs[-1].get("output")), options)
    user = _last_with_role(items, "user")
    user_text = content_text(user.get("content")) if user else ""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    if tools:
        first = tools[0]
        return _tool_call(str(first.get("name", "")), first.get("parameters"), user_text, options, "call_")
    return _text_reply("Echo: " + user_text, options)


def plan_messages_reply(body: dict[str, Any], options: ReplyOptions) -> Reply:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise StandInError("'messages' must be a non-empty list")
    user = _last_with_role(messages, "user")
    content = user.get("content") if user else ""
    blocks = content if isinstance(content, list) else []
    results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
    if results:
        return _text_reply("Tool said: " + content_text(results[-1].get("content")), options)
    user_text = content_text(
        [b for b in blocks if isinstance(b, dict) and b.get("type") == "text"] if blocks else content
    )
    tools = [
        t
        for t in body.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("name"), str) and t.get("type") in (None, "custom")
    ]
    if tools:
        return _tool_call(tools[0]["name"], tools[0].get("input_schema"), user_text, options, "toolu_")
    return _text_reply("Echo: " + user_text, options)


# ---------------------------------------------------------------------------------------------
# Wire formats (pure functions producing JSON documents and SSE frames)


def sse_frame(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()


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
    id: str = field(default_factory=lambda: _new_id("chatcmpl-"))
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
    id: str = field(default_factory=lambda: _new_id("resp_"))
    item_id: str = field(default_factory=lambda: _new_id("msg_"))
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
    id: str = field(default_factory=lambda: _new_id("msg_"))

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


def compress(document: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(document, mtime=0)
    if encoding == "deflate":
        return zlib.compress(document)
    if encoding == "br":
        return brotli.compress(document)
    if encoding == "zstd":
        return zstd.compress(document)
    raise ValueError(f"unsupported encoding {encoding!r}")


class StreamCompressor:
    """Compresses a stream piece by piece, flushing each piece so the client can decode it at once."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        if encoding == "gzip":
            self._z: Any = zlib.compressobj(wbits=31)
        elif encoding == "deflate":
            self._z = zlib.compressobj()
        elif encoding == "br":
            self._z = brotli.Compressor()
        elif encoding == "zstd":
            self._z = zstd.ZstdCompressor()
        else:
            self._z = None

    def piece(self, data: bytes) -> bytes:
        if self._z is None:
            return data
        if self.encoding == "br":
            return self._z.process(data) + self._z.flush()
        if self.encoding == "zstd":
            return self._z.compress(data, zstd.ZstdCompressor.FLUSH_BLOCK)
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)

    def end(self) -> bytes:
        if self._z is None:
            return b""
        if self.encoding == "br":
            return self._z.finish()
        if self.encoding == "zstd":
            return self._z.flush(zstd.ZstdCompressor.FLUSH_FRAME)
        return self._z.flush()


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


def big_body_pieces(size: int) -> Iterator[bytes]:
    remaining = size
    while remaining > 0:
        piece = BIG_PIECE if remaining >= len(BIG_PIECE) else BIG_PIECE[:remaining]
        remaining -= len(piece)
        yield piece


# ---------------------------------------------------------------------------------------------
# Certificates


@dataclass(frozen=True)
class CertificateFiles:
    cert_path: Path
    key_path: Path


def _subject_alt_names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    try:
        host_ip = ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    else:
        if host_ip != ipaddress.ip_address("127.0.0.1"):
            names.append(x509.IPAddress(host_ip))
    return names


def generate_certificate(workdir: Path, host: str) -> CertificateFiles:
    """Self-signed EC certificate acting as its own trust anchor (clients trust ``cert_path``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "failcore stand-in"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "failcore tests"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path = workdir / "standin-key.pem"
    cert_path = workdir / "standin-cert.pem"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as key_file:
        key_file.write(key_pem)
    os.chmod(key_path, 0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CertificateFiles(cert_path=cert_path, key_path=key_path)


# ---------------------------------------------------------------------------------------------
# HTTP server


_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, ssl.SSLError, TimeoutError)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_port = False
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], owner: StandIn, tls_context: ssl.SSLContext | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.owner = owner
        self.tls_context = tls_context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can stall offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the per-connection thread, so a slow or broken
        # client never stalls accept().
        connection: socket.socket = request
        if self.tls_context is not None:
            request.settimeout(TLS_HANDSHAKE_TIMEOUT)
            tls_connection = self.tls_context.wrap_socket(
                request, server_side=True, do_handshake_on_connect=False
            )
            try:
                tls_connection.do_handshake()
            except OSError as exc:  # ssl.SSLError is an OSError
                log.debug("stand-in TLS handshake with %s failed: %s", client_address, exc)
                tls_connection.close()
                return
            connection = tls_connection
        with self._connections_lock:
            self._connections.add(connection)
        try:
            super().finish_request(connection, client_address)
        except _CLIENT_GONE:
            pass
        finally:
            with self._connections_lock:
                self._connections.discard(connection)
            if connection is not request:
                with contextlib.suppress(OSError):
                    connection.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("stand-in error while serving %s", client_address, exc_info=True)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


_GEMINI_ROUTE = re.compile(
    r"^/v1(?:beta)?/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)$"
)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "failcore-standin/1"
    sys_version = ""
    timeout = IDLE_CONNECTION_TIMEOUT
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("stand-in %s - " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # -- plumbing -----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except StandInError as exc:
            self.close_connection = True
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": {"message": str(exc), "type": "bad_request"}})
            return
        recorded = RecordedRequest(
            method=self.command, path=self.path, headers=list(self.headers.items()), body=body, ts=time.time()
        )
        self.server.owner._record(recorded)
        target = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(target.query).items()}
        route = self._route(self.command, target.path)
        try:
            route(body, query)
        except _CLIENT_GONE:
            self.close_connection = True

    def _route(self, method: str, path: str) -> Callable[[bytes, dict[str, str]], None]:
        provider_routes = {
            "/v1/chat/completions": self._chat_completions,
            "/v1/responses": self._responses,
            "/v1/messages": self._messages,
        }
        get_routes = {
            "/sse": self._sse,
            "/json": self._json,
            "/gzip": self._encoded,
            "/deflate": self._encoded,
            "/br": self._encoded,
            "/zstd": self._encoded,
            "/big": self._big,
            "/binary": self._binary,
            "/slow": self._slow,
            "/drop": self._drop,
            "/ws": self._websocket,
        }
        if path == "/echo":
            return self._echo
        if method == "POST" and path in provider_routes:
            return provider_routes[path]
        if method == "POST" and _GEMINI_ROUTE.match(path):
            return self._gemini
        if method == "POST" and path in ("/api/chat", "/api/generate"):
            return self._ollama
        if method == "GET" and path in get_routes:
            return get_routes[path]
        if method == "GET" and path.startswith("/status/"):
            return self._status
        return self._not_found

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked_body()
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        try:
            length = int(raw_length)
        except ValueError as exc:
            raise StandInError(f"bad Content-Length {raw_length!r}") from exc
        if not 0 <= length <= MAX_REQUEST_BODY:
            raise StandInError(f"Content-Length out of range: {length}")
        return self.rfile.read(length)

    def _read_chunked_body(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError as exc:
                raise StandInError(f"bad chunk size {size_line!r}") from exc
            if size == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass  # trailers are read and discarded
                return b"".join(parts)
            total += size
            if total > MAX_REQUEST_BODY:
                raise StandInError("request body too large")
            parts.append(self.rfile.read(size))
            self.rfile.readline(8)

    def _send_bytes(
        self, status: int, body: bytes, content_type: str, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, document: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        self._send_bytes(status, json.dumps(document).encode(), "application/json", headers)

    def _start_chunked(self, status: int, content_type: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _stream_sse(
        self,
        frames: Iterable[bytes],
        gap: float,
        headers: Iterable[tuple[str, str]] = (),
        linger: float = 0.0,
        options: ReplyOptions | None = None,
        content_type: str = "text/event-stream; charset=utf-8",
    ) -> None:
        encoding = options.encoding if options is not None else "identity"
        extra = [("Cache-Control", "no-cache"), *headers]
        if encoding != "identity":
            extra.append(("Content-Encoding", encoding))
        if options is not None and options.framing == "length":
            body = compress(b"".join(frames), encoding) if encoding != "identity" else b"".join(frames)
            self._send_bytes(HTTPStatus.OK, body, content_type, extra)
            return
        compressor = StreamCompressor(encoding)
        self._start_chunked(HTTPStatus.OK, content_type, extra)
        for index, frame in enumerate(frames):
            if index and gap > 0:
                time.sleep(gap)
            self._write_chunk(compressor.piece(frame))
        self._write_chunk(compressor.end())
        if linger > 0:
            self.wfile.flush()
            time.sleep(linger)
        self._end_chunked()

    def _answer(self, document: Any, options: ReplyOptions, headers: Iterable[tuple[str, str]] = ()) -> None:
        """A JSON answer framed and encoded as the control headers ask."""
        body = json.dumps(document).encode()
        extra = list(headers)
        if options.encoding != "identity":
            body = compress(body, options.encoding)
            extra.append(("Content-Encoding", options.encoding))
        if options.framing != "chunked":
            self._send_bytes(HTTPStatus.OK, body, "application/json", extra)
            return
        self._start_chunked(HTTPStatus.OK, "application/json", extra)
        third = max(1, len(body) // 3)
        for piece in (body[:third], body[third : 2 * third], body[2 * third :]):
            self._write_chunk(piece)
        self._end_chunked()

    # -- providers ----------------------------------------------------------------------------

    def _provider_request(self, body: bytes, endpoint: str) -> tuple[dict[str, Any], ReplyOptions]:
        try:
            document = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StandInError(f"body is not valid JSON: {exc}") from exc
        return _require_dict(document), read_options(self.headers, endpoint, self.server.owner.sse_gap)

    def _chat_completions(self, body: bytes, query: dict[str, str]) -> None:
        try:
            request, options = self._provider_request(body, "chat")
            reply = plan_chat_reply(request, options)
        except StandInError as exc:
            self._send_json(HTTPStatus.BAD_REQUEST, openai_error(str(exc)))
            return
        stream_options = request.get("stream_options") or {}
        completion = ChatCompletion(
            model=request["model"],
            reply=reply,
            usage=options.usage,
            include_usage=bool(stream_options.get("include_usage")),
        )
        headers = [("x-request-id", _new_id("req_"))]
        if request.get("stream"):
            self._stream_sse(completion.frames(), options.gap, headers, options.linger, options)
        else:
            self._answer(completion.document(), options, headers)

    def _responses(self, body: bytes, query: dict[str, str]) -> None:
        try:
            request, options = self._provider_request(body, "responses")
            reply = plan_responses_reply(request, options)
        except StandInError as exc:
            self._send_json(HTTPStatus.BAD_REQUEST, openai_error(str(exc)))
            return
        result = ResponsesResult(request=request, reply=reply, usage=options.usage)
        headers = [("x-request-id", _new_id("req_"))]
        if request.get("stream"):
            self._stream_sse(result.frames(), options.gap, headers, options.linger, options)
        else:
            self._answer(result.document(), options, headers)

    def _messages(self, body: bytes, query: dict[str, str]) -> None:
        try:
            request, options = self._provider_request(body, "messages")
            reply = plan_messages_reply(request, options)
        except StandInError as exc:
            self._send_json(HTTPStatus.BAD_REQUEST, anthropic_error(str(exc)))
            return
        message = AnthropicMessage(model=request["model"], reply=reply, usage=options.usage)
        headers = [("request-id", _new_id("req_"))]
        if request.get("stream"):
            self._stream_sse(message.frames(), options.gap, headers, options.linger, options)
        else:
            self._answer(message.document(), options, headers)

    def _gemini(self, body: bytes, query: dict[str, str]) -> None:
        route = _GEMINI_ROUTE.match(urlsplit(self.path).path)
        assert route is not None
        try:
            request = json.loads(body)
            if not isinstance(request, dict) or not isinstance(request.get("contents"), list):
                raise StandInError("'contents' must be a list")
            options = read_options(self.headers, "gemini", self.server.owner.sse_gap)
        except (ValueError, StandInError) as exc:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": {"code": 400, "message": str(exc)}})
            return
        last = request["contents"][-1] if request["contents"] else {}
        result = GeminiResult(
            model=route.group("model"),
            reply=_text_reply("Echo: " + content_text(_dict_or_empty(last).get("parts")), options),
            usage=options.usage,
        )
        if route.group("method") == "generateContent":
            self._answer(result.document(), options)
        elif query.get("alt") == "sse":
            frames = (sse_frame(chunk) for chunk in result.chunks())
            self._stream_sse(frames, options.gap, (), options.linger, options)
        else:
            chunks = result.chunks()
            pieces = [
                (b"[" if i == 0 else b",\r\n") + json.dumps(chunk).encode() for i, chunk in enumerate(chunks)
            ]
            pieces[-1] += b"]"
            self._stream_sse(
                pieces, options.gap, (), options.linger, options, "application/json; charset=UTF-8"
            )

    def _ollama(self, body: bytes, query: dict[str, str]) -> None:
        try:
            request = _require_dict(json.loads(body))
            options = read_options(self.headers, "ollama", self.server.owner.sse_gap)
        except (ValueError, StandInError) as exc:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        chat = urlsplit(self.path).path == "/api/chat"
        messages = request.get("messages") if chat else None
        last = messages[-1] if isinstance(messages, list) and messages else {}
        prompt = content_text(_dict_or_empty(last).get("content")) if chat else str(request.get("prompt", ""))
        result = OllamaResult(request["model"], _text_reply("Echo: " + prompt, options), options.usage, chat)
        if request.get("stream") is False:
            self._answer(result.document(), options)
        else:
            self._stream_sse(result.lines(), options.gap, (), options.linger, options, "application/x-ndjson")

    # -- generic endpoints --------------------------------------------------------------------

    def _bad_query(self, exc: Exception) -> None:
        self._send_json(HTTPStatus.BAD_REQUEST, {"error": {"message": str(exc), "type": "bad_request"}})

    def _sse(self, body: bytes, query: dict[str, str]) -> None:
        try:
            count = int(query.get("n", "3"))
            gap = parse_seconds(query.get("gap"), self.server.owner.sse_gap)
            if not 0 <= count <= MAX_SSE_EVENTS:
                raise StandInError(f"n out of range: {count}")
        except (ValueError, StandInError) as exc:
            self._bad_query(exc)
            return
        self._stream_sse((f"data: event {i}\n\n".encode() for i in range(1, count + 1)), gap)

    def _json(self, body: bytes, query: dict[str, str]) -> None:
        self._send_json(HTTPStatus.OK, SAMPLE_DOCUMENT)

    def _echo(self, body: bytes, query: dict[str, str]) -> None:
        try:
            text: str | None = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        self._send_json(
            HTTPStatus.OK,
            {
                "method": self.command,
                "path": self.path,
                "headers": [[name, value] for name, value in self.headers.items()],
                "body": text,
                "body_base64": base64.b64encode(body).decode("ascii"),
            },
        )

    def _encoded(self, body: bytes, query: dict[str, str]) -> None:
        encoding = urlsplit(self.path).path.lstrip("/")
        document = json.dumps(SAMPLE_DOCUMENT).encode()
        self._send_bytes(
            HTTPStatus.OK,
            compress(document, encoding),
            "application/json",
            [("Content-Encoding", encoding), ("Vary", "Accept-Encoding")],
        )

    def _big(self, body: bytes, query: dict[str, str]) -> None:
        try:
            megabytes = float(query.get("mb", "1"))
            if not 0 <= megabytes <= MAX_BIG_MB:
                raise StandInError(f"mb out of range: {megabytes}")
        except (ValueError, StandInError) as exc:
            self._bad_query(exc)
            return
        size = int(megabytes * 1024 * 1024)
        if query.get("chunked") == "1":
            self._start_chunked(HTTPStatus.OK, "application/octet-stream")
            for piece in big_body_pieces(size):
                self._write_chunk(piece)
            self._end_chunked()
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        for piece in big_body_pieces(size):
            self.wfile.write(piece)

    def _binary(self, body: bytes, query: dict[str, str]) -> None:
        self._send_bytes(HTTPStatus.OK, BINARY_BODY, "application/octet-stream")

    def _status(self, body: bytes, query: dict[str, str]) -> None:
        raw = urlsplit(self.path).path.removeprefix("/status/")
        if not raw.isdigit() or not 200 <= int(raw) <= 599:
            self._bad_query(StandInError(f"status must be 200..599, got {raw!r}"))
            return
        code = int(raw)
        if code in (HTTPStatus.NO_CONTENT, HTTPStatus.NOT_MODIFIED):
            # These statuses must carry neither a body nor a Content-Length.
            self.send_response(code)
            self.end_headers()
            return
        try:
            reason = HTTPStatus(code).phrase
        except ValueError:
            reason = "Unassigned"
        if code >= 400:
            self._send_json(code, {"error": {"code": code, "message": reason}})
        else:
            self._send_json(code, {"status": code, "reason": reason})

    def _slow(self, body: bytes, query: dict[str, str]) -> None:
        try:
            seconds = parse_seconds(query.get("seconds", "1"), 0.0, "seconds")
        except StandInError as exc:
            self._bad_query(exc)
            return
        time.sleep(seconds)
        self._send_json(HTTPStatus.OK, {"slept": seconds})

    def _drop(self, body: bytes, query: dict[str, str]) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _not_found(self, body: bytes, query: dict[str, str]) -> None:
        message = f"no route for {self.command} {urlsplit(self.path).path}"
        self._send_json(HTTPStatus.NOT_FOUND, {"error": {"message": message, "type": "not_found"}})

    # -- websocket ----------------------------------------------------------------------------

    def _websocket(self, body: bytes, query: dict[str, str]) -> None:
        if self.headers.get("Upgrade", "").lower() != "websocket":
            self._send_json(
                HTTPStatus.UPGRADE_REQUIRED,
                {"error": {"message": "websocket upgrade required", "type": "upgrade_required"}},
                [("Upgrade", "websocket"), ("Connection", "Upgrade")],
            )
            return
        self.close_connection = True
        head_lines = [self.requestline, *(f"{name}: {value}" for name, value in self.headers.items())]
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(("\r\n".join(head_lines) + "\r\n\r\n").encode("latin-1"))
        _WebSocketEcho(ws, self.rfile.read1, self.wfile.write).run()


class _WebSocketEcho:
    """Echo loop over an already-read upgrade request; wsproto handles handshake and framing."""

    def __init__(
        self, ws: WSConnection, receive: Callable[[int], bytes], send: Callable[[bytes], Any]
    ) -> None:
        self._ws = ws
        self._receive = receive
        self._send = send

    def run(self) -> None:
        while True:
            if not self._handle_events():
                return
            data = self._receive(65536)
            self._ws.receive_data(data or None)
            if not data:
                self._handle_events()
                return

    def _handle_events(self) -> bool:
        for event in self._ws.events():
            if isinstance(event, Request):
                self._send(self._ws.send(AcceptConnection()))
            elif isinstance(event, TextMessage):
                echoed_text = TextMessage(data=event.data, message_finished=event.message_finished)
                self._send(self._ws.send(echoed_text))
            elif isinstance(event, BytesMessage):
                echoed_bytes = BytesMessage(data=event.data, message_finished=event.message_finished)
                self._send(self._ws.send(echoed_bytes))
            elif isinstance(event, Ping):
                self._send(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self._send(self._ws.send(event.response()))
                return False
            elif isinstance(event, RejectConnection):
                return False
        return True


# ---------------------------------------------------------------------------------------------
# Public facade


class StandIn:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: bool = True,
        sse_gap: float = 0.0,
        workdir: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.sse_gap = sse_gap
        self._workdir = workdir
        self._owned_workdir: Path | None = None
        self._certificate: CertificateFiles | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._requests: list[RecordedRequest] = []
        self._requests_lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("stand-in already started")
        context = self._tls_context() if self.tls else None
        self._server = _Server((self.host, self.port), self, context)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"standin-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._owned_workdir is not None:
            shutil.rmtree(self._owned_workdir, ignore_errors=True)
            self._owned_workdir = None
            self._certificate = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _tls_context(self) -> ssl.SSLContext:
        if self._certificate is None:
            self._certificate = generate_certificate(self._prepare_workdir(), self.host)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._certificate.cert_path, self._certificate.key_path)
        context.set_alpn_protocols(["http/1.1"])
        return context

    def _prepare_workdir(self) -> Path:
        if self._workdir is None:
            self._owned_workdir = Path(tempfile.mkdtemp(prefix="failcore-standin-"))
            return self._owned_workdir
        self._workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._workdir

    # -- addressing ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def ca_path(self) -> Path:
        if self._certificate is None:
            raise RuntimeError("no certificate: the stand-in is not started or runs without TLS")
        return self._certificate.cert_path

    # -- recording ----------------------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._requests_lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot; the server keeps appending to its own list concurrently."""
        with self._requests_lock:
            return list(self._requests)

    def request_count(self, path_prefix: str = "") -> int:
        with self._requests_lock:
            return sum(1 for request in self._requests if request.path.startswith(path_prefix))

    def reset(self) -> None:
        with self._requests_lock:
            self._requests.clear()
