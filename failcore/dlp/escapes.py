"""Secrets next to a byte that is not UTF-8, in text as the tape records it (failcore.wiretext).

The tape writes such a byte as the text `\\xNN`: its last hex digit glues onto what follows, so a token
right after it (`\\xffghp_…`) has lost its start boundary in the recorded text, where on the wire (the
byte itself) it has one. `escaped_hits` scans the recorded text with each such escape read back as its
byte and gives the hits the recorded text itself does not have, with offsets into the recorded text:
the blocking scan and the evidence scan both read it, so what the tape records as a hit was found
before the request left, and is masked where it is recorded.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import replace

from failcore.dlp.model import Hit, Scans
from failcore.wiretext import utf8_bytes

# What `bytes.decode("utf-8", "backslashreplace")` writes for a byte that is not UTF-8 (0x80-0xff),
# also upper-cased (a host name's upper-case spelling, failcore.evidence.hostnames).
_ESCAPE = re.compile(rb"\\[xX][89a-fA-F][0-9a-fA-F]")


def unescaped(recorded: bytes) -> tuple[bytes, list[int]] | None:
    """The bytes a recorded text stands for, each `\\xNN` escape as its byte, and where each such byte
    is in them; None when the text has no such escape."""
    if b"\\x" not in recorded and b"\\X" not in recorded:
        return None
    out = bytearray()
    at: list[int] = []
    cursor = 0
    for match in _ESCAPE.finditer(recorded):
        out += recorded[cursor : match.start()]
        at.append(len(out))
        out.append(int(match.group(0)[2:], 16))
        cursor = match.end()
    if not at:
        return None
    out += recorded[cursor:]
    return bytes(out), at


def escaped_hits(engine: Scans, recorded: str | bytes) -> list[Hit]:
    """The hits of `recorded` read with its escapes as bytes (unescaped) that the recorded text does
    not have at the same place, their offsets mapped onto the recorded text's UTF-8 bytes (a hit
    covering an escape covers all of it)."""
    if isinstance(recorded, str):
        if "\\" not in recorded:  # (most texts: no escape to read)
            return []
        data = utf8_bytes(recorded)
    else:
        data = recorded
    found = unescaped(data)
    if found is None:
        return []
    raw, at = found
    hits = engine.scan(raw)
    if not hits:
        return []
    # An escape is 4 bytes where its byte is 1: an offset moves by 3 for each escaped byte before it.
    moved = [(h, 3 * bisect.bisect_left(at, h.start), 3 * bisect.bisect_left(at, h.end)) for h in hits]
    mapped = [replace(h, start=h.start + before, end=h.end + within) for h, before, within in moved]
    known = {(h.rule_id, h.start, h.end) for h in engine.scan(data)}
    return [h for h in mapped if (h.rule_id, h.start, h.end) not in known]
