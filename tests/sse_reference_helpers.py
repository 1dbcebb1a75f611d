"""The stream decoder and per-event accumulator code of failcore as it was before the SSE fast path
(main 39b585c), kept verbatim as the reference the new code must agree with, and a reader of SSE
written from the WHATWG HTML standard (section 9.2.6, "Interpreting an event stream"), independently
of failcore's. Used by tests/test_sse_equivalence.py.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from failcore.framing import EdgeBuffer, Frame
from failcore.llm.providers.anthropic import AnthropicMessages
from failcore.llm.providers.base import Accumulator, salvage_object
from failcore.llm.providers.openai import (
    _OTHER_TEXT_DELTAS,
    RESPONSES_TOOL_CALL_TYPES,
    ChatCompletions,
    Responses,
)
from failcore.llm.typed import as_count, as_dict, as_list, as_text, loads_or_none

DATA = Path(__file__).parent / "data"
RECORDINGS = (
    DATA / "conformance" / "llm" / "openllmetry-cassettes.jsonl",
    DATA / "openllmetry" / "report-cassettes.jsonl",
)


def recorded_streams() -> list[dict[str, Any]]:
    """Every recorded exchange whose answer is an SSE or NDJSON stream."""
    found = []
    for path in RECORDINGS:
        for line in path.read_text(encoding="utf-8").splitlines():
            exchange = json.loads(line) if line else None
            media = ((exchange or {}).get("response_headers", {}).get("content-type") or "").lower()
            if exchange and ("event-stream" in media or "ndjson" in media):
                found.append(exchange)
    return found


def chunkings(
    body: bytes, rng: random.Random, *, one_byte: bool = True, tops: tuple[int, ...] = (7, 200)
) -> Iterator[list[bytes]]:
    """The body as one chunk, in 1-byte chunks, and in random-sized chunks of 1 to each of `tops` bytes."""
    yield [body]
    if one_byte:
        yield [body[i : i + 1] for i in range(len(body))]
    for top in tops:
        pieces, start = [], 0
        while start < len(body):
            size = rng.randint(1, top)
            pieces.append(body[start : start + size])
            start += size
        yield pieces


# ---------------------------------------------------------------- the decoder before (39b585c)


class OldSseDecoder:
    __slots__ = ("_data", "_event", "_has_data", "_line", "_oversized")

    def __init__(self, max_event_bytes: int) -> None:
        self._line = EdgeBuffer(max_event_bytes)
        self._data = EdgeBuffer(max_event_bytes)
        self._event: str | None = None
        self._has_data = False
        self._oversized = False

    def feed(self, chunk: bytes) -> Iterator[Frame]:
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                self._line.extend(memoryview(chunk)[start:])
                return
            self._line.extend(memoryview(chunk)[start:newline])
            start = newline + 1
            frame = self._take_line()
            if frame is not None:
                yield frame

    def finish(self) -> Iterator[Frame]:
        if len(self._line):
            frame = self._take_line()
            if frame is not None:
                yield frame
        frame = self._dispatch()
        if frame is not None:
            yield frame

    def _take_line(self) -> Frame | None:
        truncated, head, tail = self._line.truncated, self._line.head(), self._line.tail()
        self._line.clear()
        if not truncated:
            head = head.removesuffix(b"\r")
            if not head:
                return self._dispatch()
        if head.startswith(b":"):
            return None
        name, _, value = head.partition(b":")
        value = value.removeprefix(b" ")
        if name == b"event":
            self._event = value.decode("utf-8", "replace").strip()[:128]
        elif name == b"data":
            if self._has_data:
                self._data.extend(b"\n")
            self._data.extend(value)
            if truncated:
                self._oversized = True
                self._data.extend(tail.removesuffix(b"\r"))
            self._has_data = True
        return None

    def _dispatch(self) -> Frame | None:
        frame = None
        if self._has_data:
            data = self._data
            if data.truncated or self._oversized:
                frame = Frame(self._event, b"", data.tail() if data.truncated else data.head())
            else:
                frame = Frame(self._event, data.head())
        self._data.clear()
        self._event = None
        self._has_data = False
        self._oversized = False
        return frame


def old_feed_frame(acc: Accumulator, frame: Frame) -> None:
    if frame.tail is not None:
        usage = salvage_object(frame.tail, acc.usage_key)
        if usage is not None:
            acc.apply_usage(usage)
        return
    if frame.data == b"[DONE]":
        acc.handle_done_marker()
        return
    payload = loads_or_none(frame.data)
    if payload is not None:
        acc.handle_event(frame.event, payload)


# ---------------------------------------------------------------- the accumulators' events before (39b585c)


class OldChatCompletions(ChatCompletions):
    def handle_event(self, event: str | None, payload: object) -> None:
        chunk = as_dict(payload)
        if "error" in chunk and "choices" not in chunk:
            self.done = self.errored = True
            return
        self.set_model(chunk.get("model"))
        self.set_service_tier(chunk.get("service_tier"))
        for choice in as_list(chunk.get("choices")):
            choice = as_dict(choice)
            index = as_count(choice.get("index")) or 0
            delta = as_dict(choice.get("delta"))
            content = as_text(delta.get("content")) if delta else as_text(choice.get("text"))
            if index == 0 and content:
                self.text.append(content)
            elif content:
                self.other_chars += len(content)
            self.other_chars += len(as_text(delta.get("refusal")) or "")
            # Visible reasoning (DeepSeek's, vLLM's `reasoning_content`, OpenRouter's `reasoning`) is billed.
            self.other_chars += len(as_text(delta.get("reasoning_content")) or "")
            self.other_chars += len(as_text(delta.get("reasoning")) or "")
            for call in as_list(delta.get("tool_calls")):
                call = as_dict(call)
                key = (index, as_count(call.get("index")) or 0)
                if key not in self._stream_tools:
                    self._stream_tools.add(key)
                    self.tool_calls += 1
                function = as_dict(call.get("function"))
                arguments = as_text(function.get("arguments"))
                self.other_chars += len(as_text(function.get("name")) or "") + len(arguments or "")
                if arguments and self.keep_content:
                    self._stream_args.setdefault(key, []).append(arguments)
            legacy = as_dict(delta.get("function_call"))
            if legacy:
                self.other_chars += len(as_text(legacy.get("name")) or "")
                self.other_chars += len(as_text(legacy.get("arguments")) or "")
            if legacy and index not in self._legacy_function_choices:
                self._legacy_function_choices.add(index)
                self.tool_calls += 1
            if index == 0:
                self.set_finish(choice.get("finish_reason"))
        usage = chunk.get("usage")
        if not isinstance(usage, dict):
            # Groq streams carry the usage in their own extension object, on the last chunk.
            usage = as_dict(chunk.get("x_groq")).get("usage")
        if isinstance(usage, dict):
            self.apply_usage(usage)


class OldResponses(Responses):
    def handle_event(self, event: str | None, payload: object) -> None:
        data = as_dict(payload)
        kind = as_text(data.get("type")) or event
        if kind == "response.output_text.delta":
            delta = as_text(data.get("delta"))
            if delta:
                self.text.append(delta)
        elif kind in _OTHER_TEXT_DELTAS:
            self.other_chars += len(as_text(data.get("delta")) or "")
        elif kind in ("response.output_item.added", "response.output_item.done"):
            item = as_dict(data.get("item"))
            if item.get("type") in RESPONSES_TOOL_CALL_TYPES:
                key = (
                    as_text(item.get("id")) or as_text(item.get("call_id")) or f"#{data.get('output_index')}"
                )
                if key not in self._tool_items:
                    self._tool_items.add(key)
                    self.tool_calls += 1
                    self.other_chars += len(as_text(item.get("name")) or "")
                if kind == "response.output_item.done" and item.get("type") == "function_call":
                    raw = as_text(item.get("arguments"))
                    if raw is not None:
                        self.add_tool_input(raw)
        elif kind in ("response.created", "response.in_progress", "response.queued"):
            self._absorb_response(as_dict(data.get("response")), final=False)
        elif kind in self._TERMINAL:
            response = as_dict(data.get("response"))
            # Tool inputs were already taken from output_item.done; the final object only fills gaps.
            self.set_model(response.get("model"))
            self.response_id = self.response_id or (as_text(response.get("id")) or "")[:256] or None
            reason = as_text(as_dict(response.get("incomplete_details")).get("reason"))
            self.set_finish(reason or as_text(response.get("status")) or kind.rsplit(".", 1)[-1])
            if not self.text.seen:
                for text in self._output_texts(response):
                    self.text.append(text)
            self._count_items(as_list(response.get("output")), collect_inputs=False)
            usage = response.get("usage")
            if isinstance(usage, dict):
                self.apply_usage(usage)
            self.done = True
            self.errored = kind == "response.failed"
        elif kind == "error":
            self.done = self.errored = True


class OldAnthropicMessages(AnthropicMessages):
    def handle_event(self, event: str | None, payload: object) -> None:
        data = as_dict(payload)
        kind = as_text(data.get("type")) or event
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
            delta_kind = delta.get("type")
            if delta_kind == "text_delta":
                self.text.append(as_text(delta.get("text")) or "")
            elif delta_kind == "input_json_delta":
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


OLD_ACCUMULATORS: dict[type[Accumulator], type[Accumulator]] = {
    ChatCompletions: OldChatCompletions,
    Responses: OldResponses,
    AnthropicMessages: OldAnthropicMessages,
}


# ---------------------------------------------------------------- SSE as the WHATWG standard reads it


def whatwg_events(body: bytes, *, strip_bom: bool = True) -> list[tuple[str, str]]:
    """(type, data) of every event the standard's parser dispatches from a whole stream: UTF-8 decoded
    with replacement, one leading BOM dropped, lines ended by CRLF, LF or CR, an event dispatched at a
    blank line only (one cut before it is discarded), `data` lines joined with LF, the type "message"
    unless an `event` field set one. (`strip_bom=False`: as if the BOM were part of the first line.)"""
    text = body.decode("utf-8", "replace")
    if strip_bom and text.startswith("\ufeff"):
        text = text[1:]
    events: list[tuple[str, str]] = []
    data, kind = "", ""
    position = 0
    while True:
        ends = [i for i in (text.find("\r", position), text.find("\n", position)) if i >= 0]
        if not ends:
            return events  # the rest is an incomplete line: discarded with any pending event
        end = min(ends)
        line = text[position:end]
        position = end + (2 if text.startswith("\r\n", end) else 1)
        if not line:
            if data:
                events.append((kind or "message", data[:-1]))
            data, kind = "", ""
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            field, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            field, value = line, ""
        if field == "data":
            data += value + "\n"
        elif field == "event":
            kind = value


# ---------------------------------------------------------------- recorded events with odd fields

ODD_VALUES: tuple[object, ...] = (None, True, False, -1, 0, 1, 2.5, "", "s", [], [1], {}, {"type": "x"})
# Fields of the providers' events that the recordings seldom or never carry, put into chat deltas.
RARE_DELTA = {
    "refusal": "no",
    "reasoning_content": "think",
    "reasoning": "more",
    "function_call": {"name": "f", "arguments": '{"a": 1}'},
    "tool_calls": [{"index": 1, "function": {"name": "g", "arguments": "{}"}}],
}


def _nodes(value: object, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _nodes(item, (*path, key))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from _nodes(item, (*path, position))


def _replace(value: object, path: tuple, new: object) -> object:
    if not path:
        return new
    holder: Any = value
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = new
    return value


def with_odd_fields(body: bytes, rng: random.Random, *, rare: bool = False) -> bytes:
    """Every JSON `data:` payload (one line, as recorded) with one value, anywhere in it, replaced by a
    value of another JSON type, or (`rare`) every chat delta also given RARE_DELTA's fields."""
    lines = body.split(b"\n")
    for position, line in enumerate(lines):
        prefix = b"data: " if line.startswith(b"data: ") else b""
        try:
            document = json.loads(line[len(prefix) :]) if line.strip() else None
        except ValueError:
            continue
        if not isinstance(document, dict | list):
            continue
        if rare:
            for choice in document.get("choices") or [] if isinstance(document, dict) else []:
                if isinstance(choice, dict) and isinstance(choice.get("delta"), dict):
                    choice["delta"] = RARE_DELTA | choice["delta"]
        else:
            nodes = list(_nodes(document))
            document = _replace(document, rng.choice(nodes), rng.choice(ODD_VALUES))
        lines[position] = prefix + json.dumps(document).encode()
    return b"\n".join(lines)
