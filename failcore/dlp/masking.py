"""Masked previews, salted fingerprints and redaction of recorded bodies."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable

from failcore.dlp.model import Hit
from failcore.wiretext import utf8_bytes

ELLIPSIS = "\u2026"
MAX_REVEALED = 8


def mask_preview(secret: bytes | str) -> str:
    """Reveal at most 8 characters and at most a third of the secret, split between both ends."""
    text = secret.decode("utf-8", errors="replace") if isinstance(secret, bytes) else secret
    revealed = min(MAX_REVEALED, len(text) // 3)
    head = (revealed + 1) // 2
    tail = revealed - head
    return text[:head] + ELLIPSIS + (text[len(text) - tail :] if tail else "")


def fingerprint(secret: bytes, salt: bytes) -> str:
    return hmac.new(salt, secret, hashlib.sha256).hexdigest()[:32]


def _merged_spans(hits: Iterable[Hit], limit: int) -> list[tuple[int, int]]:
    spans = sorted((max(0, hit.start), min(limit, hit.end)) for hit in hits if hit.end > hit.start)
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def mask_bytes(data: bytes, hits: Iterable[Hit]) -> bytes:
    """Replace every hit's byte span by its masked preview; overlapping hits are masked as one span."""
    out: list[bytes] = []
    cursor = 0
    for start, end in _merged_spans(hits, len(data)):
        out.append(data[cursor:start])
        out.append(mask_preview(data[start:end]).encode("utf-8"))
        cursor = end
    out.append(data[cursor:])
    return b"".join(out)


def mask_text(data: str, hits: Iterable[Hit]) -> str:
    """Hit offsets are UTF-8 byte offsets of `data`, as produced by scanning the same text."""
    return mask_bytes(utf8_bytes(data), hits).decode("utf-8", errors="replace")


def mask_strings(values: Iterable[str], scan: Callable[[str], list[Hit]] | None) -> list[str]:
    """Each string with what `scan` (a DLP engine's scan) finds in it masked: a command line, say."""
    out = []
    for value in values:
        hits = scan(value) if scan is not None and value else None
        out.append(mask_text(value, hits) if hits else value)
    return out
