"""An LLM call's recorded bodies read back as a conversation: messages, tool calls, tool results, answer.

Pure functions over the request and response body text the tape holds (already DLP-masked by the
recorder). They understand OpenAI Chat Completions (JSON and SSE), OpenAI Responses (JSON and SSE) and
Anthropic Messages (JSON and SSE); anything else, or a body the cap cut short, gives what could be read
plus a note, never an exception. Every string returned is recorded content: hostile, escape it.

SSE bodies are framed by failcore.framing, the same decoder the usage tracker runs on live streams.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from failcore.framing import frames_of_body

# Longest text kept for one turn; the report says when a turn was cut.
TURN_TEXT_CAP: Final = 8192
MAX_TURNS: Final = 200


@dataclass(slots=True)
class Turn:
    role: str
    kind: str  # "text", "tool_call", "tool_result", "tools"
    text: str
    name: str | None = None
    cut: bool = False


@dataclass(slots=True)
class Conversation:
    api: str
    request: list[Turn] = field(default_factory=list)
    response: list[Turn] = field(default_factory=list)
    streamed: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.request and not self.response


def _turn(role: object, kind: str, text: object, name: object = None) -> Turn:
    value = text if isinstance(text, str) else _json_text(text)
    cut = len(value) > TURN_TEXT_CAP
    return Turn(
        role=str(role or "?")[:64],
        kind=kind,
        text=value[:TURN_TEXT_CAP],
        name=str(name)[:256] if name is not None else None,
        cut=cut,
    )


def _json_text(value: object) -> str:
    if value is None:
        return ""
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    except TypeError:
        return str(value)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _loads(text: str) -> object | None:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


# ---------------------------------------------------------------- requests


def _content_parts(role: str, content: object) -> Iterator[Turn]:
    """OpenAI/Anthropic content: a string or a list of typed parts."""
    if isinstance(content, str):
        if content:
            yield _turn(role, "text", content)
        return
    for part in _list(content):
        part = _dict(part)
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text"):
            yield _turn(role, "text", part.get("text"))
        elif kind == "tool_use":
            yield _turn(role, "tool_call", part.get("input"), part.get("name"))
        elif kind == "tool_result":
            inner = part.get("content")
            if isinstance(inner, list):
                inner = "\n".join(str(_dict(p).get("text", "")) for p in inner) or _json_text(inner)
            yield _turn("tool", "tool_result", inner, part.get("tool_use_id"))
        elif kind:
            yield _turn(role, "text", f"[{kind}]")


def _tools_turn(tools: object) -> Turn | None:
    names = []
    for tool in _list(tools):
        tool = _dict(tool)
        name = tool.get("name") or _dict(tool.get("function")).get("name") or tool.get("type")
        if name:
            names.append(str(name))
    return _turn("tools", "tools", ", ".join(names)) if names else None


def _chat_request(doc: dict[str, Any]) -> Iterator[Turn]:
    for message in _list(doc.get("messages")):
        message = _dict(message)
        role = str(message.get("role") or "?")
        if role == "tool":
            yield _turn("tool", "tool_result", message.get("content"), message.get("tool_call_id"))
            continue
        if message.get("content") is not None:
            yield from _content_parts(role, message.get("content"))
        for call in _list(message.get("tool_calls")):
            function = _dict(_dict(call).get("function"))
            yield _turn(role, "tool_call", function.get("arguments"), function.get("name"))


def _responses_request(doc: dict[str, Any]) -> Iterator[Turn]:
    if isinstance(doc.get("instructions"), str):
        yield _turn("system", "text", doc["instructions"])
    items = doc.get("input")
    if isinstance(items, str):
        yield _turn("user", "text", items)
        return
    for item in _list(items):
        item = _dict(item)
        kind = item.get("type") or "message"
        if kind == "message":
            yield from _content_parts(str(item.get("role") or "?"), item.get("content"))
        elif kind == "function_call":
            yield _turn("assistant", "tool_call", item.get("arguments"), item.get("name"))
        elif kind == "function_call_output":
            yield _turn("tool", "tool_result", item.get("output"), item.get("call_id"))
        else:
            yield _turn("?", "text", f"[{kind}]")


def _anthropic_request(doc: dict[str, Any]) -> Iterator[Turn]:
    system = doc.get("system")
    if system is not None:
        yield from _content_parts("system", system)
    for message in _list(doc.get("messages")):
        message = _dict(message)
        yield from _content_parts(str(message.get("role") or "?"), message.get("content"))


# ---------------------------------------------------------------- responses


def _sse_payloads(text: str) -> Iterator[object]:
    """The JSON payloads of a recorded SSE body's events (framed by failcore.framing), without [DONE]."""
    for frame in frames_of_body(text):
        if frame.data.strip() != b"[DONE]":
            parsed = _loads(frame.data.decode("utf-8", "replace"))
            if parsed is not None:
                yield parsed


def _chat_document(doc: dict[str, Any]) -> Iterator[Turn]:
    for choice in _list(doc.get("choices"))[:1]:
        message = _dict(_dict(choice).get("message"))
        if message:
            yield from _chat_request({"messages": [message | {"role": message.get("role") or "assistant"}]})
        elif isinstance(_dict(choice).get("text"), str):
            yield _turn("assistant", "text", choice["text"])


def _chat_stream(payloads: Iterator[object]) -> Iterator[Turn]:
    text: list[str] = []
    calls: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    for chunk in payloads:
        for choice in _list(_dict(chunk).get("choices")):
            choice = _dict(choice)
            if choice.get("index", 0) != 0:
                continue
            delta = _dict(choice.get("delta"))
            piece = delta.get("content") if delta else choice.get("text")
            if isinstance(piece, str):
                text.append(piece)
            for call in _list(delta.get("tool_calls")):
                call = _dict(call)
                index = call.get("index") if isinstance(call.get("index"), int) else 0
                function = _dict(call.get("function"))
                if isinstance(function.get("name"), str):
                    names[index] = function["name"]
                if isinstance(function.get("arguments"), str):
                    calls.setdefault(index, []).append(function["arguments"])
    if text:
        yield _turn("assistant", "text", "".join(text))
    for index in sorted(set(calls) | set(names)):
        yield _turn("assistant", "tool_call", "".join(calls.get(index, [])), names.get(index))


def _responses_output(doc: dict[str, Any]) -> Iterator[Turn]:
    for item in _list(doc.get("output")):
        item = _dict(item)
        kind = item.get("type")
        if kind == "message":
            yield from _content_parts(str(item.get("role") or "assistant"), item.get("content"))
        elif kind == "function_call":
            yield _turn("assistant", "tool_call", item.get("arguments"), item.get("name"))
        elif kind == "reasoning":
            summary = [str(_dict(s).get("text", "")) for s in _list(item.get("summary"))]
            if any(summary):
                yield _turn("assistant", "text", "[reasoning] " + "\n".join(summary))
        elif kind:
            yield _turn("assistant", "text", f"[{kind}]")


def _responses_stream(payloads: Iterator[object]) -> Iterator[Turn]:
    text: list[str] = []
    calls: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for payload in payloads:
        event = _dict(payload)
        kind = event.get("type")
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            final = list(_responses_output(_dict(event.get("response"))))
            if final:
                yield from final
                return
        elif kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            text.append(event["delta"])
        elif kind == "response.output_item.added":
            item = _dict(event.get("item"))
            if item.get("type") == "function_call":
                names[str(item.get("id"))] = str(item.get("name"))
        elif kind == "response.function_call_arguments.delta" and isinstance(event.get("delta"), str):
            calls.setdefault(str(event.get("item_id")), []).append(event["delta"])
    if text:
        yield _turn("assistant", "text", "".join(text))
    for key in [*names, *(k for k in calls if k not in names)]:
        yield _turn("assistant", "tool_call", "".join(calls.get(key, [])), names.get(key))


def _anthropic_stream(payloads: Iterator[object]) -> Iterator[Turn]:
    blocks: dict[int, dict[str, Any]] = {}
    for payload in payloads:
        event = _dict(payload)
        kind = event.get("type")
        index = event.get("index") if isinstance(event.get("index"), int) else 0
        if kind == "content_block_start":
            block = _dict(event.get("content_block"))
            blocks[index] = {"type": block.get("type"), "name": block.get("name"), "parts": []}
            if isinstance(block.get("text"), str):
                blocks[index]["parts"].append(block["text"])
        elif kind == "content_block_delta":
            delta = _dict(event.get("delta"))
            piece = delta.get("text") if "text" in delta else delta.get("partial_json")
            if isinstance(piece, str):
                blocks.setdefault(index, {"type": "text", "name": None, "parts": []})["parts"].append(piece)
    for index in sorted(blocks):
        block = blocks[index]
        kind = "tool_call" if block["type"] == "tool_use" else "text"
        yield _turn("assistant", kind, "".join(block["parts"]), block["name"])


def _looks_like_sse(text: str, content_type: str) -> bool:
    return "event-stream" in content_type or text.lstrip().startswith(("data:", "event:"))


def _bounded(turns: Iterator[Turn], into: list[Turn], conv: Conversation) -> None:
    for turn in turns:
        if len(into) >= MAX_TURNS:
            conv.notes.append(f"more than {MAX_TURNS} turns; the rest are left out")
            return
        into.append(turn)


def read_conversation(
    api: str | None,
    request_text: str | None,
    response_text: str | None,
    response_content_type: str | None = None,
    *,
    request_truncated: bool = False,
    response_truncated: bool = False,
) -> Conversation | None:
    """The conversation of one recorded LLM call, or None for an API this does not read."""
    readers = {
        "chat_completions": (_chat_request, _chat_document, _chat_stream),
        "completions": (None, _chat_document, _chat_stream),
        "responses": (_responses_request, _responses_output, _responses_stream),
        "messages": (_anthropic_request, None, _anthropic_stream),
    }
    if api not in readers:
        return None
    read_request, read_document, read_stream = readers[api]
    conv = Conversation(api=api)
    if request_text:
        doc = _loads(request_text)
        if isinstance(doc, dict):
            if isinstance(doc.get("prompt"), str):
                conv.request.append(_turn("user", "text", doc["prompt"]))
            if read_request is not None:
                _bounded(read_request(doc), conv.request, conv)
            tools = _tools_turn(doc.get("tools"))
            if tools is not None:
                conv.request.insert(0, tools)
        else:
            conv.notes.append(
                "request body was cut by the recording cap; not readable as JSON"
                if request_truncated
                else "request body is not JSON"
            )
    if response_text:
        if _looks_like_sse(response_text, (response_content_type or "").lower()):
            conv.streamed = True
            _bounded(read_stream(_sse_payloads(response_text)), conv.response, conv)
            if response_truncated:
                conv.notes.append("streamed answer was cut by the recording cap; shown up to the cap")
        else:
            doc = _loads(response_text)
            if isinstance(doc, dict):
                reader = read_document or (lambda d: _content_parts("assistant", d.get("content")))
                _bounded(reader(doc), conv.response, conv)
            else:
                conv.notes.append(
                    "response body was cut by the recording cap; not readable as JSON"
                    if response_truncated
                    else "response body is not JSON"
                )
    return conv
