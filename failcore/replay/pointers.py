"""JSON pointers over parsed JSON values: parse and format them (RFC 6901, plus `*` for any key or
index), leave the values they name out of a document, and find the first place two documents differ."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

_PREVIEW_CHARS: Final = 200
ABSENT: Final = object()  # a side of a Difference where the value does not exist
IGNORED: Final = "[failcore: ignored]"

Pointer = tuple[str, ...]


def parse_pointer(pointer: str) -> Pointer:
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise ValueError(f"JSON pointer must start with '/': {pointer!r}")
    return tuple(part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/"))


def format_pointer(parts: Iterable[str | int]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def without_pointers(value: Any, patterns: Sequence[Pointer]) -> Any:
    """A copy of `value` without what the pointer patterns name. Removed list items are replaced by a
    marker rather than deleted, so the indexes of their siblings stay comparable."""
    if not patterns:
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            rest = [p[1:] for p in patterns if p and p[0] in (key, "*")]
            if any(not r for r in rest):
                continue
            out[key] = without_pointers(item, rest) if rest else item
        return out
    if isinstance(value, list):
        items: list[Any] = []
        for index, item in enumerate(value):
            rest = [p[1:] for p in patterns if p and p[0] in (str(index), "*")]
            if any(not r for r in rest):
                items.append(IGNORED)
            else:
                items.append(without_pointers(item, rest) if rest else item)
        return items
    return value


@dataclass(frozen=True, slots=True)
class Difference:
    pointer: Pointer
    recorded: Any
    live: Any


def _same_scalar(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def first_difference(recorded: Any, live: Any, at: Pointer = ()) -> Difference | None:
    """The first place, in document order of the recorded value, where two JSON values differ."""
    if isinstance(recorded, dict) and isinstance(live, dict):
        for key, value in recorded.items():
            if key not in live:
                return Difference((*at, key), value, ABSENT)
            found = first_difference(value, live[key], (*at, key))
            if found is not None:
                return found
        for key, value in live.items():
            if key not in recorded:
                return Difference((*at, key), ABSENT, value)
        return None
    if isinstance(recorded, list) and isinstance(live, list):
        for index, (a, b) in enumerate(zip(recorded, live, strict=False)):
            found = first_difference(a, b, (*at, str(index)))
            if found is not None:
                return found
        if len(recorded) != len(live):
            n = min(len(recorded), len(live))
            return Difference(
                (*at, str(n)),
                recorded[n] if n < len(recorded) else ABSENT,
                live[n] if n < len(live) else ABSENT,
            )
        return None
    if isinstance(recorded, dict | list) or isinstance(live, dict | list):
        return Difference(at, recorded, live)
    return None if _same_scalar(recorded, live) else Difference(at, recorded, live)


def preview(value: Any) -> Any:
    """A JSON value small enough for an error body or a terminal; long values are cut with '…'."""
    if isinstance(value, str):
        return value if len(value) <= _PREVIEW_CHARS else value[:_PREVIEW_CHARS] + "…"
    if isinstance(value, dict | list):
        text = orjson.dumps(value).decode()
        return value if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "…"
    return value
