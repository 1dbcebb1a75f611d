"""What the meter keeps of a body that streams through: `WholeBodyCopy` (its wire bytes, up to a
limit, to be metered whole at its end) and `StreamInflater` (its Content-Encoding undone chunk by chunk,
in bounded steps, for a stream metered as it passes); and `message_encoding`, the codings a body read
for a decision carries as mitmproxy holds it."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import brotli
from mitmproxy import http

from failcore.compat import zstd
from failcore.evidence.body import body_encoding, deflate_wbits

# Output of one incremental decompression step of a metered stream.
_INFLATE_STEP = 64 * 1024


def message_encoding(message: http.Message) -> str | None:
    """The codings of a message's body as mitmproxy holds it, comma-joined (body_encoding): its
    Content-Encoding's, then a Transfer-Encoding's other than `chunked` (mitmproxy undoes only the
    chunked framing of `gzip, chunked` and forwards the body gzip'd, for its receiver to inflate)."""
    headers = message.headers
    return body_encoding(
        headers.get("content-encoding"), headers.get("transfer-encoding"), headers.get("x-amz-content-sha256")
    )


class WholeBodyCopy:
    """The wire bytes of a response that streams through for lack of a length, kept up to `limit` so it
    can be metered whole at its end; past the limit the copy is dropped (`overflow`)."""

    __slots__ = ("data", "limit", "overflow")

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit
        self.overflow = False

    def __call__(self, chunk: bytes) -> None:
        if self.overflow:
            return
        if len(self.data) + len(chunk) > self.limit:
            self.overflow = True
            self.data = bytearray()
            return
        self.data += chunk


class StreamInflater:
    """Content-Encoding undone chunk by chunk, in bounded steps, for a stream metered as it passes.
    Input it cannot decode ends the inflation (the stream then reports no usage, never a wrong one)."""

    __slots__ = ("_feed", "_head", "_kind", "_state", "broken")

    def __init__(self, encoding: str, feed: Callable[[bytes], None]) -> None:
        self._feed = feed
        self._kind = encoding.strip().lower()
        self.broken = False
        self._head = b""  # a deflate body's first byte, until its second says whether it is zlib
        if self._kind in ("gzip", "x-gzip"):
            self._state: Any = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif self._kind == "deflate":
            self._state = None  # zlib or raw deflate: decided by the first two bytes
        elif self._kind == "br":
            self._state = brotli.Decompressor()
        elif self._kind == "zstd":
            self._state = zstd.ZstdDecompressor()
        else:
            raise ValueError(f"unsupported content-encoding {encoding!r}")

    def __call__(self, chunk: bytes) -> None:
        if self.broken or not chunk:
            return
        try:
            self._inflate(chunk)
        except (zlib.error, brotli.error, zstd.ZstdError, EOFError, ValueError):
            self.broken = True

    def _inflate(self, chunk: bytes) -> None:
        if self._kind == "deflate" and self._state is None:
            chunk = self._head + chunk
            if len(chunk) < 2:
                self._head = chunk
                return
            self._head = b""
            self._state = zlib.decompressobj(deflate_wbits(chunk))
        state = self._state
        if isinstance(state, brotli.Decompressor):
            self._feed(state.process(chunk, output_buffer_limit=_INFLATE_STEP))
            while not state.can_accept_more_data() and not state.is_finished():
                self._feed(state.process(b"", output_buffer_limit=_INFLATE_STEP))
        elif self._kind == "zstd":
            while chunk:
                self._feed(state.decompress(chunk, _INFLATE_STEP))
                while not state.eof and not state.needs_input:
                    self._feed(state.decompress(b"", _INFLATE_STEP))
                if not state.eof:
                    return
                chunk = state.unused_data  # the next frame
                state = self._state = zstd.ZstdDecompressor()
        else:
            pending = chunk
            while pending and not state.eof:
                self._feed(state.decompress(pending, _INFLATE_STEP))
                pending = state.unconsumed_tail
