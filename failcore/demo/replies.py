"""Reply planning: which answer a provider request gets (echo, a tool call, or the tool's result) and
the per-request `x-standin-*` control headers. Pure functions, no I/O."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, replace
from email.message import Message
from typing import Any

from failcore.demo.framing import ENCODINGS, FRAMINGS

MAX_SLOW_SECONDS = 300.0


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


class StandInError(ValueError):
    """A request the stand-in refuses with a 400 in the provider's error format."""


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


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def _tool_call(name: str, schema: Any, user_text: str, options: ReplyOptions, id_prefix: str) -> Reply:
    args = options.tool_args if options.tool_args is not None else arguments_for_schema(schema, user_text)
    return Reply(tool_call=ToolCall(name=name, arguments=json.dumps(args), call_id=new_id(id_prefix)))


def text_reply(default_text: str, options: ReplyOptions) -> Reply:
    return Reply(text=options.reply_text if options.reply_text is not None else default_text)


def dict_or_empty(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def require_dict(body: Any) -> dict[str, Any]:
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
        return text_reply("Tool said: " + content_text(last.get("content")), options)
    user = _last_with_role(messages, "user")
    user_text = content_text(user.get("content")) if user else ""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    if tools:
        function = tools[0].get("function") or {}
        return _tool_call(
            str(function.get("name", "")), function.get("parameters"), user_text, options, "call_"
        )
    return text_reply("Echo: " + user_text, options)


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
        return text_reply("Tool said: " + content_text(outputs[-1].get("output")), options)
    user = _last_with_role(items, "user")
    user_text = content_text(user.get("content")) if user else ""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    if tools:
        first = tools[0]
        return _tool_call(str(first.get("name", "")), first.get("parameters"), user_text, options, "call_")
    return text_reply("Echo: " + user_text, options)


def plan_messages_reply(body: dict[str, Any], options: ReplyOptions) -> Reply:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise StandInError("'messages' must be a non-empty list")
    user = _last_with_role(messages, "user")
    content = user.get("content") if user else ""
    blocks = content if isinstance(content, list) else []
    results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
    if results:
        return text_reply("Tool said: " + content_text(results[-1].get("content")), options)
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
    return text_reply("Echo: " + user_text, options)
