"""Typed reads of attacker-influenced JSON: a field of the wrong type reads as absent, never as an error."""

from __future__ import annotations

import json
import re

import orjson

_SURROGATE = re.compile("[\ud800-\udfff]")


def as_count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def as_text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def as_dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list:
    return value if isinstance(value, list) else []


def sum_known(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def loads_or_none(data: bytes | str) -> object | None:
    """The JSON document, or None. What orjson rejects but Python servers (FastAPI: vLLM, LiteLLM,
    SGLang) accept is read as they read it: `NaN`, `Infinity`, `1e999`, a lone surrogate escape
    (`\\ud800`, kept as `?` so the document still serialises). Failcore must not see less than the
    upstream does: a body it could not read would lose the model a budget is scoped to."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return _without_surrogates(json.loads(data))
    except (ValueError, RecursionError, TypeError):
        return None


def _clean_text(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8") if _SURROGATE.search(text) else text


def _without_surrogates(value: object) -> object:
    """`value` with every lone surrogate (in a key or a string) replaced by `?`, iteratively (a deep
    document must not exhaust the stack)."""
    if isinstance(value, str):
        return _clean_text(value)
    if not isinstance(value, dict | list):
        return value
    root: list[object] = [value]
    pending: list[object] = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            for i, item in enumerate(node):
                if isinstance(item, str):
                    node[i] = _clean_text(item)
                elif isinstance(item, dict | list):
                    pending.append(item)
        elif isinstance(node, dict):
            for key in list(node):
                item = node[key]
                if isinstance(item, str):
                    item = _clean_text(item)
                elif isinstance(item, dict | list):
                    pending.append(item)
                clean = _clean_text(key)
                if clean != key:
                    del node[key]
                node[clean] = item
    return root[0]
