"""The `compress` (LZW) coding for tests, independent of failcore's decoder: the .Z fixtures ncompress
wrote (tests/data/lzw, with what gzip and ncompress decoded them to), `gzip -dc` run on a stream, and an
encoder for bodies a test makes itself (`lzw_compress`: the same bytes as ncompress's `compress -c`
for a body too short for a CLEAR, which tests/test_lzw.py checks against the fixtures; its output is
also checked with `gzip -dc`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

LZW_DATA = Path(__file__).resolve().parent / "data" / "lzw"


def lzw_fixtures() -> dict[str, dict[str, Any]]:
    """manifest.json: per .Z file, the input's and each real decoder's sha256, size and exit status."""
    return json.loads((LZW_DATA / "manifest.json").read_text())


def gzip_dc(wire: bytes) -> tuple[bytes, int] | None:
    """What `gzip -dc` writes for `wire` and its exit status, or None when gzip is not installed."""
    gzip = shutil.which("gzip")
    if gzip is None:
        return None
    done = subprocess.run([gzip, "-dc"], input=wire, capture_output=True, timeout=60, check=False)
    return done.stdout, done.returncode


def lzw_pack(codes: list[int], maxbits: int = 16, *, block_mode: bool = True) -> bytes:
    """A compress stream of these codes: packed least significant bit first, 9 bits wide at first, one
    bit wider once the decoder's table (one entry a code after the first, up to 2^maxbits) passes the
    width, a width's codes padded to a multiple of 8 before the next width (as ncompress pads them, and
    as gzip's unlzw.c reads them). Code 256 in block mode (not first) is a CLEAR, padded the same."""
    head = b"\x1f\x9d" + bytes([maxbits | (0x80 if block_mode else 0)])
    maxmax = 1 << maxbits
    free = 257 if block_mode else 256  # the decoder's next entry
    bits, maxcode = 9, (1 << 9) - 1
    acc = nbits = in_width = 0
    for i, code in enumerate(codes):
        if i and free > maxcode:  # the decoder reads this code wider: pad the last width's codes
            nbits += bits * (-in_width % 8)
            in_width = 0
            bits += 1
            maxcode = maxmax if bits == maxbits else (1 << bits) - 1
        acc |= code << nbits
        nbits += bits
        in_width += 1
        if block_mode and code == 256 and i:  # CLEAR: the rest of its group is padding, 9 bits again
            nbits += bits * (-in_width % 8)
            in_width = 0
            bits, maxcode, free = 9, (1 << 9) - 1, 256
        elif i and free < maxmax:  # (the first code adds no entry)
            free += 1
    return head + acc.to_bytes((nbits + 7) // 8, "little")


def lzw_compress(data: bytes, maxbits: int = 16, *, block_mode: bool = True) -> bytes:
    """`data` as Unix compress writes it, without CLEAR codes (the table stops growing when full).
    `block_mode=False`: the compress 2.0 format (no CLEAR code; entries numbered from 256), which
    ncompress -C fails to write."""
    table = {bytes([i]): i for i in range(256)}
    free = 257 if block_mode else 256
    codes = []
    word = data[:1]
    for byte in data[1:]:
        grown = word + bytes([byte])
        if grown in table:
            word = grown
            continue
        codes.append(table[word])
        if free < 1 << maxbits:
            table[grown] = free
            free += 1
        word = bytes([byte])
    if word:
        codes.append(table[word])
    return lzw_pack(codes, maxbits, block_mode=block_mode)
