"""What replay matching compares: a request's shape (method, URL, query in any order, and its body
normalised: JSON key order ignored, volatile fields left out), and where two requests first differ,
with values masked where a recorded DLP scan flagged them."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson

from failcore.replay.pointers import (
    ABSENT,
    Difference,
    Pointer,
    first_difference,
    format_pointer,
    parse_pointer,
    preview,
    without_pointers,
)

# Fields SDKs fill with per-session or per-call values, so two runs of the same agent differ there.
DEFAULT_IGNORED_POINTERS: Final[tuple[str, ...]] = (
    "/metadata/user_id",  # Anthropic SDK clients (Claude Code) put a per-session id here
    "/metadata/session_id",
    "/prompt_cache_key",  # OpenAI prompt-cache routing key, often per session
    "/request_id",
    "/idempotency_key",
    "/timestamp",
    "/created_at",
)


@dataclass(frozen=True, slots=True)
class NormalizedBody:
    raw: bytes
    json: Any  # the parsed body minus ignored fields, or ABSENT when it is not JSON
    key: bytes


def normalize_body(raw: bytes, ignore: Sequence[Pointer]) -> NormalizedBody:
    if raw.lstrip()[:1] in (b"{", b"["):
        try:
            value = without_pointers(orjson.loads(raw), ignore)
            return NormalizedBody(raw, value, b"j:" + orjson.dumps(value, option=orjson.OPT_SORT_KEYS))
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            pass
    return NormalizedBody(raw, ABSENT, b"r:" + hashlib.sha256(raw).digest())


def dlp_pointers(event: dict[str, Any]) -> tuple[Pointer, ...]:
    """Request-body JSON pointers a DLP scan flagged in a recorded event: their values are masked."""
    dlp = event.get("dlp")
    hits = dlp.get("hits") if isinstance(dlp, dict) else None
    if not isinstance(hits, list):  # recorded content may hold anything there
        return ()
    out = []
    for hit in hits:
        location = hit.get("location") if isinstance(hit, dict) else None
        if isinstance(location, str) and location.startswith("request.body:"):
            with contextlib.suppress(ValueError):
                out.append(parse_pointer(location.removeprefix("request.body:")))
    return tuple(out)


def masked(pointer: Pointer, sensitive: Sequence[Pointer]) -> bool:
    """A value is masked when it is, contains or lies inside a DLP-flagged location."""
    return any(pointer[: len(s)] == s or s[: len(pointer)] == pointer for s in sensitive)


def difference_dict(diff: Difference, sensitive: Sequence[Pointer]) -> dict[str, Any]:
    out: dict[str, Any] = {"where": "body", "pointer": format_pointer(diff.pointer)}
    hide = masked(diff.pointer, sensitive)
    for side, value in (("recorded", diff.recorded), ("live", diff.live)):
        if value is ABSENT:
            out[f"{side}_absent"] = True
        else:
            out[side] = "[masked: DLP hit]" if hide else preview(value)
    return out


@dataclass(frozen=True, slots=True)
class RequestShape:
    method: str
    scheme: str
    host: str
    port: int
    path: str
    query: tuple[tuple[str, str], ...]
    body: NormalizedBody | None  # None: the recording kept only part of it, so it cannot be matched

    @classmethod
    def make(
        cls, method: str, scheme: str, host: str, port: int, target: str, body: NormalizedBody | None
    ) -> RequestShape:
        path, _, query = target.partition("?")
        pairs = tuple(sorted(parse_qsl(query, keep_blank_values=True)))
        return cls(method.upper(), scheme.lower(), host.lower(), port, path, pairs, body)

    @property
    def route(self) -> tuple[str, str, str]:
        return (self.method, self.host, self.path)

    def key(self) -> tuple[Any, ...] | None:
        if self.body is None:
            return None
        return (self.method, self.scheme, self.host, self.port, self.path, self.query, self.body.key)

    @property
    def url(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.query)
        return f"{self.scheme}://{self.host}:{self.port}{self.path}" + (f"?{query}" if query else "")


def request_difference(
    recorded: RequestShape, live: RequestShape, sensitive: Sequence[Pointer] = ()
) -> dict[str, Any] | None:
    """Where a live request first departs from a recorded one: the method, the URL or a body pointer."""
    if recorded.method != live.method:
        return {"where": "method", "recorded": recorded.method, "live": live.method}
    if recorded.url != live.url:
        return {"where": "url", "recorded": preview(recorded.url), "live": preview(live.url)}
    if recorded.body is None:
        return {"where": "body", "pointer": None, "note": "the recorded body was truncated in the tape"}
    if live.body is None or recorded.body.key == live.body.key:
        return None
    if recorded.body.json is not ABSENT and live.body.json is not ABSENT:
        diff = first_difference(recorded.body.json, live.body.json)
        if diff is not None:
            return difference_dict(diff, sensitive)
    a, b = recorded.body.raw, live.body.raw
    offset = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return {"where": "body", "pointer": None, "offset": offset, "recorded_size": len(a), "live_size": len(b)}
