"""What a tape reader can recover from a recorded body that was compressed: every body the tape holds,
inflated the way a streaming receiver inflates it (one byte at a time, keeping what came out before an
error), with gzip, zlib, raw deflate, brotli and zstd. Independent of failcore's decoders."""

from __future__ import annotations

import base64
import contextlib
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import brotli

from failcore.compat import zstd
from tests.helpers import read_tape
from tests.security.helpers import tape_bytes


def _bodies(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "b64" in node or "text" in node:
            yield node
        for value in node.values():
            yield from _bodies(value)
    elif isinstance(node, list):
        for value in node:
            yield from _bodies(value)


def _streamed(data: bytes, step: Callable[[bytes], bytes]) -> bytes:
    out = bytearray()
    with contextlib.suppress(Exception):  # a corrupt or truncated stream: what came out before it
        for i in range(len(data)):
            out += step(data[i : i + 1])
    return bytes(out)


def inflations(data: bytes) -> list[bytes]:
    """`data` as each decoder fed it byte by byte makes of it (gzip members one after another)."""
    found = []
    for wbits in (47, -15):  # gzip or zlib (auto-detected), raw deflate
        z = zlib.decompressobj(wbits)
        found.append(_streamed(data, z.decompress))
    found.append(_streamed(data, brotli.Decompressor().process))
    found.append(_streamed(data, zstd.ZstdDecompressor().decompress))
    # The members after the first (a multi-member gzip body), each from its own header on.
    start = data.find(b"\x1f\x8b", 1)
    while start > 0:
        found.append(_streamed(data[start:], zlib.decompressobj(31).decompress))
        start = data.find(b"\x1f\x8b", start + 1)
    return found


def recoverable(tape: Path) -> list[bytes]:
    """Every body the tape holds, as stored and as every decoder recovers it."""
    found = [tape_bytes(tape)]
    for event in read_tape(tape):
        for body in _bodies(event):
            data = base64.b64decode(body["b64"]) if "b64" in body else body["text"].encode()
            found.append(data)
            found.extend(inflations(data))
    return found
