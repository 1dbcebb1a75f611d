"""One tape line read for the viewer: the few fields its lists show, without the bodies; and whether the
line's own hash and link to the previous line hold.

Only a bounded part of a line is parsed: network events put their small fields before `"request":` and the
optional `llm`/`dlp`/`warnings`/`cut` blocks after the bodies, so the head and the tail are parsed and
the bodies in between are skipped. A JSON string cannot contain an unescaped `"`, so those key
patterns can only match real keys; a match inside a nested object leaves unbalanced braces, the slice
fails to parse and the whole line is parsed instead — never a wrong row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from failcore.tape.reader import (
    HASH_SUFFIX_LEN,
    compute_line_hash,
    is_well_formed,
    line_hash,
    line_prev,
    line_seq,
)
from failcore.views.runtime import RUNTIME_KINDS, describe

_REQUEST_KEY: Final = b',"request":'
_TAIL_KEYS: Final = (b',"llm":', b',"dlp":', b',"warnings":', b',"cut":')


def extract_fields(raw: bytes) -> dict[str, Any] | None:
    """The parsed event without its bodies (or the whole event when it has none); None if unparsable."""
    if not is_well_formed(raw):
        return None
    head_end = raw.find(_REQUEST_KEY)
    if head_end <= 0:
        return parse_whole(raw)
    try:
        fields = orjson.loads(raw[:head_end] + b"}")
    except orjson.JSONDecodeError:
        return parse_whole(raw)
    if "run" not in fields:
        # The fast path relies on failcore's own key order (run before request); other writers may
        # order keys differently, and a row must never lose its run.
        return parse_whole(raw)
    tail_starts = [p for key in _TAIL_KEYS if (p := raw.rfind(key)) > head_end]
    if tail_starts:
        try:
            tail = orjson.loads(b"{" + raw[min(tail_starts) + 1 : -HASH_SUFFIX_LEN] + b"}")
        except orjson.JSONDecodeError:
            return parse_whole(raw)
        fields.update(tail)
    return fields if isinstance(fields, dict) else None


def parse_whole(raw: bytes) -> dict[str, Any] | None:
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def as_number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def as_integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def event_label(fields: dict[str, Any]) -> str:
    """What the path column shows: the request path, or a short description of a non-exchange line."""
    kind = fields.get("kind")
    if kind in ("network", "websocket"):
        path = fields.get("path")
        return str(path) if path is not None else str(fields.get("summary") or "")
    if kind in RUNTIME_KINDS:  # tool name + args, fs op + path, exec program + argv, connect target
        return describe(fields)
    detail = fields.get("detail") if isinstance(fields.get("detail"), dict) else {}
    what = fields.get("summary") or detail.get("action") or fields.get("error") or ""
    if kind == "dropped":
        what = f"{fields.get('count', detail.get('count', '?'))} event(s) lost"
    return f"[{kind}] {what}".rstrip()


@dataclass(frozen=True, slots=True)
class ChainStatus:
    hash_ok: bool
    prev_ok: bool
    seq: int | None
    recorded_hash: str
    computed_hash: str
    recorded_prev: str
    expected_prev: str
    well_formed: bool

    @property
    def ok(self) -> bool:
        return self.well_formed and self.hash_ok and self.prev_ok


def chain_status(raw: bytes, expected_prev: bytes) -> ChainStatus:
    """This line's own hash recomputed, and whether its prev matches the previous line's h.

    `expected_prev` comes from the previous indexed line; a bad line skipped by the index between them
    shows up as a broken link, which is what it is.
    """
    if not is_well_formed(raw):
        return ChainStatus(False, False, None, "", "", "", expected_prev.decode("ascii", "replace"), False)
    recorded = line_hash(raw).decode("ascii", "replace")
    computed = compute_line_hash(raw).decode("ascii")
    prev = line_prev(raw).decode("ascii", "replace")
    return ChainStatus(
        hash_ok=recorded == computed,
        prev_ok=line_prev(raw) == expected_prev,
        seq=line_seq(raw),
        recorded_hash=recorded,
        computed_hash=computed,
        recorded_prev=prev,
        expected_prev=expected_prev.decode("ascii", "replace"),
        well_formed=True,
    )
