"""failcore.dlp.wide: a text Python's JSON reader takes for UTF-16 or UTF-32, narrowed to a byte a code
unit; the expected narrowing is derived with Python's own codecs (each code unit decoded alone)."""

from __future__ import annotations

import json

import pytest

from failcore.dlp.wide import NARROW_OTHER, narrowed

TEXT = '{"k": "AKIA key", "é": "中文 \U0001f600 x"}'


def _expected(text: str, width: int) -> bytes:
    """Each UTF-16 (or UTF-32) code unit: its ASCII byte, else NARROW_OTHER."""
    units = text.encode("utf-16-le" if width == 2 else "utf-32-le")
    out = bytearray()
    for i in range(0, len(units), width):
        code = int.from_bytes(units[i : i + width], "little")
        out.append(code if code < 0x80 else NARROW_OTHER)
    return bytes(out)


@pytest.mark.parametrize(
    ("encoding", "width", "offset"),
    [("utf-16", 2, 2), ("utf-16-le", 2, 0), ("utf-16-be", 2, 0), ("utf-32", 4, 4), ("utf-32-be", 4, 0)],
)
def test_each_code_unit_is_one_byte_in_step(encoding: str, width: int, offset: int) -> None:
    wide = TEXT.encode(encoding)
    assert json.loads(wide) == json.loads(TEXT)  # what Python's reader makes of it
    found = narrowed(wide)
    assert found is not None and (found.width, found.offset) == (width, offset)
    assert found.data == _expected(TEXT, width)
    start = found.data.index(b"AKIA")
    plain = {"utf-16": "utf-16-le", "utf-32": "utf-32-le"}.get(encoding, encoding)  # after the BOM
    assert wide[slice(*found.span(start, start + 4))].decode(plain) == "AKIA"


@pytest.mark.parametrize("text", [b"", b"{", b'{"k": "v"}', "é中".encode(), b"\xef\xbb\xbf{}"])
def test_utf8_is_not_narrowed(text: bytes) -> None:
    assert narrowed(text) is None
