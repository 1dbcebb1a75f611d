"""Typed reads of attacker-influenced JSON: a field of the wrong type reads as absent, never as an error."""

from __future__ import annotations

import orjson


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
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
