"""A UTF-16 or UTF-32 text read as the one-byte text a pattern can match, offsets in step.

Python's `json.loads` of bytes reads UTF-16 and UTF-32 (json.detect_encoding: a BOM, or the NUL bytes
of the first four), and Starlette's `Request.json()` is `json.loads(await self.body())`: a FastAPI LLM
server takes a UTF-16 chat body as the same request. A pattern written for ASCII never matches the same
text in UTF-16 (`A\\x00K\\x00…`), so the engine also scans the text narrowed: each code unit one byte,
its character when that is ASCII, NARROW_OTHER otherwise (as a UTF-8 text's bytes of another script
read to an ASCII pattern). Code unit `k` of the text is byte `k` of the narrowed text: a hit there maps
back to `offset + width * k`, exactly.
"""

from __future__ import annotations

import json
from typing import NamedTuple

# What a code unit that is not an ASCII character becomes (a byte no ASCII pattern matches, as the bytes
# of a non-ASCII character in UTF-8 are).
NARROW_OTHER = 0x80
_ASCII_ONLY = bytes(range(0x80)) + bytes([NARROW_OTHER]) * 0x80
# Any byte but 0 as NARROW_OTHER (a high byte that is set: the unit is no ASCII character).
_HIGH_MASK = bytes([0]) + bytes([NARROW_OTHER]) * 0xFF
# json.detect_encoding's answers: (code unit width, the index of its low byte, a BOM's length).
_WIDE: dict[str, tuple[int, int]] = {
    "utf-16-le": (2, 0),
    "utf-16-be": (2, 1),
    "utf-32-le": (4, 0),
    "utf-32-be": (4, 3),
}
_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


class Narrowed(NamedTuple):
    data: bytes
    width: int  # bytes per code unit
    offset: int  # where the first code unit starts (after a BOM)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The bytes of the wide text that `data[start:end]` stands for."""
        return self.offset + self.width * start, self.offset + self.width * end


def narrow_units(data: bytes, width: int, low_index: int) -> bytes:
    """Each `width`-byte code unit of `data` as one byte: its low byte (at `low_index`) when the others
    are 0 and it is ASCII, NARROW_OTHER otherwise. C passes only (the units' bytes OR-ed as big ints)."""
    units = len(data) // width
    data = data[: units * width]
    value = int.from_bytes(data[low_index::width], "big")
    for index in range(width):
        if index != low_index:
            value |= int.from_bytes(data[index::width].translate(_HIGH_MASK), "big")
    return value.to_bytes(units, "big").translate(_ASCII_ONLY)


def narrowed(buffer: bytes) -> Narrowed | None:
    """`buffer` narrowed when Python's JSON reader takes it for UTF-16 or UTF-32, else None."""
    if len(buffer) < 2 or (buffer[0] and buffer[1] and buffer[:2] not in (b"\xff\xfe", b"\xfe\xff")):
        return None  # (the common case, without a call)
    encoding = json.detect_encoding(buffer)
    offset = 0
    if encoding in ("utf-16", "utf-32"):
        encoding, offset = next((name, len(bom)) for bom, name in _BOMS if buffer.startswith(bom))
    shape = _WIDE.get(encoding)
    if shape is None:
        return None
    width, low_index = shape
    return Narrowed(narrow_units(buffer[offset:], width, low_index), width, offset)
