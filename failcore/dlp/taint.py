"""Attribute a hit inside an LLM request body to where the text came from (user, tool result, ...).

A secret inside a tool result reached the model from the agent's environment: that is the exfiltration
path DLP cares most about, hence `exfiltration_path`.
"""

from __future__ import annotations

from typing import Any

TOOL_RESULT = "tool_result"
TOOL_CALL_ARGUMENTS = "tool_call_arguments"


def parse_pointer(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError(f"JSON pointer must start with '/': {pointer!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def _index(token: str, items: Any) -> int | None:
    if not isinstance(items, list) or not token.isdigit():
        return None
    index = int(token)
    return index if index < len(items) else None


def _source(
    fmt: str,
    role: str,
    *,
    tool_name: str | None = None,
    tool_call_id: str | None = None,
    message_index: int | None = None,
) -> dict[str, Any]:
    return {
        "format": fmt,
        "role": role,
        "tool_name": tool_name,
        "tool_call_id": tool_call_id,
        "message_index": message_index,
        "exfiltration_path": role == TOOL_RESULT,
    }


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _openai_tool_name(messages: list[Any], before: int, call_id: str | None) -> str | None:
    for message in reversed(messages[:before]):
        for call in _as_dict(message).get("tool_calls") or ():
            if _as_dict(call).get("id") == call_id:
                return _as_dict(_as_dict(call).get("function")).get("name")
    return None


def _anthropic_tool_name(messages: list[Any], before: int, tool_use_id: str | None) -> str | None:
    for message in reversed(messages[: before + 1]):
        content = _as_dict(message).get("content")
        for block in content if isinstance(content, list) else ():
            block = _as_dict(block)
            if block.get("type") == "tool_use" and block.get("id") == tool_use_id:
                return block.get("name")
    return None


def _messages_source(request: dict[str, Any], path: list[str]) -> dict[str, Any] | None:
    messages = request.get("messages")
    index = _index(path[1], messages) if len(path) > 1 else None
    if index is None:
        return None
    message = _as_dict(messages[index])
    role = str(message.get("role", "unknown"))
    rest = path[2:]
    content = message.get("content")
    # Anthropic content blocks: tool_use / tool_result are typed blocks inside the content list.
    if rest[:1] == ["content"] and len(rest) > 1:
        block_index = _index(rest[1], content)
        block = _as_dict(content[block_index]) if block_index is not None else {}
        block_type = block.get("type")
        if block_type == "tool_use":
            return _source(
                "anthropic",
                TOOL_CALL_ARGUMENTS,
                tool_name=block.get("name"),
                tool_call_id=block.get("id"),
                message_index=index,
            )
        if block_type == "tool_result":
            tool_use_id = block.get("tool_use_id")
            return _source(
                "anthropic",
                TOOL_RESULT,
                tool_call_id=tool_use_id,
                message_index=index,
                tool_name=_anthropic_tool_name(messages, index, tool_use_id),
            )
    if role == "tool":
        call_id = message.get("tool_call_id")
        return _source(
            "openai_chat",
            TOOL_RESULT,
            tool_call_id=call_id,
            message_index=index,
            tool_name=message.get("name") or _openai_tool_name(messages, index, call_id),
        )
    if rest[:1] == ["tool_calls"] and len(rest) > 1:
        calls = message.get("tool_calls")
        call_index = _index(rest[1], calls)
        call = _as_dict(calls[call_index]) if call_index is not None else {}
        return _source(
            "openai_chat",
            TOOL_CALL_ARGUMENTS,
            tool_call_id=call.get("id"),
            message_index=index,
            tool_name=_as_dict(call.get("function")).get("name"),
        )
    fmt = "anthropic" if isinstance(request.get("system"), str | list) else "openai_chat"
    return _source(fmt, role, message_index=index)


def _responses_source(request: dict[str, Any], path: list[str]) -> dict[str, Any] | None:
    items = request.get("input")
    if isinstance(items, str):
        return _source("openai_responses", "user")
    index = _index(path[1], items) if len(path) > 1 else None
    if index is None:
        return None
    item = _as_dict(items[index])
    item_type = item.get("type", "message")
    if item_type == "function_call":
        return _source(
            "openai_responses",
            TOOL_CALL_ARGUMENTS,
            tool_name=item.get("name"),
            tool_call_id=item.get("call_id"),
            message_index=index,
        )
    if item_type == "function_call_output":
        call_id = item.get("call_id")
        name = next(
            (
                _as_dict(other).get("name")
                for other in items[:index]
                if _as_dict(other).get("type") == "function_call"
                and _as_dict(other).get("call_id") == call_id
            ),
            None,
        )
        return _source(
            "openai_responses", TOOL_RESULT, tool_name=name, tool_call_id=call_id, message_index=index
        )
    return _source("openai_responses", str(item.get("role", "user")), message_index=index)


def taint_source(request_json: dict[str, Any], pointer: str) -> dict[str, Any] | None:
    """Where the text at `pointer` came from, or None when the pointer is not inside a known format.

    Keys: format (openai_chat / openai_responses / anthropic), role (system, developer, user,
    assistant, tool_call_arguments, tool_result), tool_name, tool_call_id, message_index,
    exfiltration_path.
    """
    try:
        path = parse_pointer(pointer)
    except ValueError:
        return None
    if not path or not isinstance(request_json, dict):
        return None
    head = path[0]
    if head == "messages":
        return _messages_source(request_json, path)
    if head == "system":
        return _source("anthropic", "system")
    if head == "instructions":
        return _source("openai_responses", "system")
    if head == "input":
        return _responses_source(request_json, path)
    return None
