"""A response to serve instead of asking upstream: recorded in a tape or written in an override file."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

# Per-hop framing, and the length/encoding of a body the tape stores decoded.
_DROPPED_RESPONSE_HEADERS: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "content-length",
        "content-encoding",
    }
)
REDACTED_MARK: Final = "[redacted hmac-sha256:"


@dataclass(frozen=True, slots=True)
class CannedResponse:
    """A response to serve: recorded or from an override file."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    chunks: tuple[int, ...] | None = None  # chunk sizes when it was streamed; None: send with a length
    offsets_ms: tuple[float, ...] | None = None


def replay_headers(recorded: Iterable[Sequence[str]]) -> tuple[tuple[str, str], ...]:
    out = []
    for pair in recorded:
        if len(pair) != 2:
            continue
        name, value = str(pair[0]), str(pair[1])
        if name.lower() in _DROPPED_RESPONSE_HEADERS or REDACTED_MARK in value:
            continue
        out.append((name, value))
    return tuple(out)
