"""What the meter keeps of a body that streams through: `WholeBodyCopy` (its wire bytes, up to a
limit, to be metered whole at its end) and `StreamInflater` (its codings, stacked or not, undone chunk
by chunk in bounded steps, for a stream metered as it passes); and `message_encoding`, the codings a body read
for a decision carries as mitmproxy holds it."""

from __future__ import annotations

from collections.abc import Callable

from mitmproxy import http

from failcore.evidence.body import (
    DECODE_ERRORS,
    MAX_DECODED_BYTES,
    body_encoding,
    decode_body,
    is_encoded,
)
from failcore.evidence.pastcap import StreamDecoder

# The most decoded bytes a metered stream's reader is handed at once.
_INFLATE_STEP = 64 * 1024


def message_encoding(message: http.Message) -> str | None:
    """The codings of a message's body as mitmproxy holds it, comma-joined (body_encoding): its
    Content-Encoding's, then a Transfer-Encoding's other than `chunked` (mitmproxy undoes only the
    chunked framing of `gzip, chunked` and forwards the body gzip'd, for its receiver to inflate)."""
    headers = message.headers
    return body_encoding(
        headers.get("content-encoding"), headers.get("transfer-encoding"), headers.get("x-amz-content-sha256")
    )


def weighed(raw: bytes | None, encoding: str | None, limit: int) -> tuple[bytes | None, int, bool]:
    """decoded_content(raw, encoding, limit), the body's size as its receiver decodes it, and whether it
    could not be decoded. The size of a body that decodes past `limit` is `limit` (a bomb is not
    inflated to weigh it); of one whose codings failcore does not undo, or that does not decode, the
    larger of its wire size and what decoded before the error."""
    if not raw or not is_encoded(encoding):
        return raw, len(raw or b""), False
    decoded = decode_body(raw, encoding, limit)
    if decoded.over_limit:
        return None, limit, True
    if decoded.error is not None:
        return raw, max(len(raw), len(decoded.data)), True
    return decoded.data, len(decoded.data), False


class WholeBodyCopy:
    """The wire bytes of a body that streams through (a response for lack of a length, a streamed
    request), kept up to `limit` so it can be metered whole at its end; past the limit the copy is
    dropped (`overflow`), and a body with codings (`encoding`) is weighed as it passes instead: `size`,
    what it decodes to (a StreamInflater counting, up to MAX_DECODED_BYTES, after which its wire bytes
    count), for a budget that cannot read it not to charge it its compressed size."""

    __slots__ = ("_inflater", "data", "encoding", "limit", "overflow", "wire")

    def __init__(self, limit: int, encoding: str | None = None) -> None:
        self.data = bytearray()
        self.limit = limit
        self.overflow = False
        self.encoding = encoding if is_encoded(encoding) else None
        self._inflater: StreamInflater | None = None
        self.wire = 0  # bytes seen past the limit, when not encoded

    def __call__(self, chunk: bytes) -> None:
        if self.overflow:
            self._weigh(chunk)
            return
        if len(self.data) + len(chunk) > self.limit:
            self.overflow = True
            kept, self.data = self.data, bytearray()
            if self.encoding is not None:
                self._inflater = StreamInflater(self.encoding, _discard)
            self._weigh(bytes(kept))
            self._weigh(chunk)
            return
        self.data += chunk

    def _weigh(self, chunk: bytes) -> None:
        if self._inflater is None:
            self.wire += len(chunk)
        else:
            self._inflater(chunk)

    @property
    def size(self) -> int:
        """Past the limit: the body's size as decoded so far (its wire size where it was not)."""
        inflater = self._inflater
        return self.wire if inflater is None else inflater.decoded + inflater.undecoded


def _discard(decoded: bytes) -> None:
    return None


class StreamInflater:
    """A body's codings undone chunk by chunk, for a stream metered as it passes: every coding of a
    stack (`gzip, br`; a transfer coding after the content codings, message_encoding), last applied
    first, each gzip member and zstd frame, in bounded steps (failcore.evidence.pastcap.StreamDecoder,
    the decoder of the stream DLP scans), handed on in pieces of at most _INFLATE_STEP bytes.

    A stack naming a coding failcore does not decode (or more than MAX_ENCODINGS), input that does not
    decode, or `limit` bytes decoded (a bomb is not inflated on the event loop without end) ends the
    decoding (`broken`: the stream reports no usage, never a wrong one), and every wire byte from the
    chunk where it ended on is counted in `undecoded`: what a budget then charges for the part it could
    not read (failcore.proxy.budgetguard), never nothing. `decoded`: the bytes handed on."""

    __slots__ = ("_decoder", "_feed", "broken", "decoded", "limit", "undecoded")

    def __init__(self, encoding: str, feed: Callable[[bytes], None], limit: int = MAX_DECODED_BYTES) -> None:
        self._feed = feed
        self.limit = limit
        self.decoded = 0
        self.undecoded = 0
        try:
            # (it counts what decodes and charges what does not by its wire bytes: nothing to salvage)
            self._decoder: StreamDecoder | None = StreamDecoder(encoding, salvage=False)
        except ValueError:  # a coding failcore does not decode, or too many
            self._decoder = None
        self.broken = self._decoder is None

    def __call__(self, chunk: bytes) -> None:
        if self.broken or self._decoder is None:
            self.undecoded += len(chunk)
            return
        if not chunk:
            return
        try:
            for out in self._decoder.feed(chunk):
                self.decoded += len(out)
                for start in range(0, len(out), _INFLATE_STEP):
                    self._feed(out[start : start + _INFLATE_STEP])
                if self.decoded >= self.limit:
                    break
        except DECODE_ERRORS:
            self.broken = True
        if self.broken or self.decoded >= self.limit:
            self.broken = True
            self.undecoded += len(chunk)  # (of a chunk decoded in part: too much, never too little)
