"""Bytes on the wire: SSE frames, content encodings (whole bodies and streams flushed piece by piece)
and big bodies produced piece by piece."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from typing import Any

import brotli

from failcore.compat import zstd

FRAMINGS = ("length", "chunked")
ENCODINGS = ("identity", "gzip", "deflate", "br", "zstd")
BIG_PIECE = bytes(range(32, 127)) * 690  # ~64 KiB of printable bytes, a recognisable pattern


def sse_frame(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()


def compress(document: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(document, mtime=0)
    if encoding == "deflate":
        return zlib.compress(document)
    if encoding == "br":
        return brotli.compress(document)
    if encoding == "zstd":
        return zstd.compress(document)
    raise ValueError(f"unsupported encoding {encoding!r}")


class StreamCompressor:
    """Compresses a stream piece by piece, flushing each piece so the client can decode it at once."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        if encoding == "gzip":
            self._z: Any = zlib.compressobj(wbits=31)
        elif encoding == "deflate":
            self._z = zlib.compressobj()
        elif encoding == "br":
            self._z = brotli.Compressor()
        elif encoding == "zstd":
            self._z = zstd.ZstdCompressor()
        else:
            self._z = None

    def piece(self, data: bytes) -> bytes:
        if self._z is None:
            return data
        if self.encoding == "br":
            return self._z.process(data) + self._z.flush()
        if self.encoding == "zstd":
            return self._z.compress(data, zstd.ZstdCompressor.FLUSH_BLOCK)
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)

    def end(self) -> bytes:
        if self._z is None:
            return b""
        if self.encoding == "br":
            return self._z.finish()
        if self.encoding == "zstd":
            return self._z.flush(zstd.ZstdCompressor.FLUSH_FRAME)
        return self._z.flush()


def big_body_pieces(size: int) -> Iterator[bytes]:
    remaining = size
    while remaining > 0:
        piece = BIG_PIECE if remaining >= len(BIG_PIECE) else BIG_PIECE[:remaining]
        remaining -= len(piece)
        yield piece
