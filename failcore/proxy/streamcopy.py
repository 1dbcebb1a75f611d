"""What the meter keeps of a body that streams through: `WholeBodyCopy` (its wire bytes, up to a
limit, to be metered whole at its end) and `StreamInflater` (its codings, stacked or not, undone chunk
by chunk in bounded steps, for a stream metered as it passes); `message_encoding`, the codings a body read
for a decision carries as mitmproxy holds it; and how the meter reads a whole body: `weighed`,
`read_request`, `weighed_answer`."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from mitmproxy import http

from failcore.evidence.body import (
    DECODE_ERRORS,
    MAX_DECODED_BYTES,
    body_encoding,
    decode_body,
    is_encoded,
)
from failcore.evidence.pastcap import StreamDecoder
from failcore.llm.typed import loads_or_none

# The most decoded bytes a metered stream's reader is handed at once.
_INFLATE_STEP = 64 * 1024
# The decoded bytes past which a copy past its limit stops catching up in one call (WholeBodyCopy): the
# wire bytes it kept are decoded across the chunks that follow, and what is left when the body ends
# across event-loop turns (settle), not in one call that stalls every other connection.
CATCH_UP_STEP = 1 << 20


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


def _request_json(content: bytes | None) -> dict[str, Any] | None:
    if not content:
        return None
    doc = loads_or_none(content)
    return doc if isinstance(doc, dict) else None


def read_request(raw: bytes | None, encoding: str | None, limit: int) -> tuple[dict[str, Any] | None, int]:
    """The request's JSON object (None if it is not one) and its size as the upstream decodes it."""
    body, size, _ = weighed(raw, encoding, limit)
    return _request_json(body), size


def weighed_answer(raw: bytes | None, encoding: str | None, limit: int) -> tuple[bytes | None, int, bool]:
    """weighed(); an answer that does not decode but is a JSON document as sent (labelled with a coding
    it is not in: a gateway inflated it and kept the header) is read, its text charged, not its size."""
    body, size, unread = weighed(raw, encoding, limit)
    return body, size, unread and not (body is raw and loads_or_none(raw) is not None)


class WholeBodyCopy:
    """The wire bytes of a body that streams through (a response for lack of a length, a streamed
    request), kept up to `limit` so it can be metered whole at its end; past the limit the copy is
    dropped (`overflow`), and a body with codings (`encoding`) is weighed as it passes instead: `size`,
    what it decodes to (a StreamInflater counting, up to MAX_DECODED_BYTES, after which its wire bytes
    count), for a budget that cannot read it not to charge it its compressed size.

    The bytes kept when the limit is passed (tens of MiB, decoding to up to MAX_DECODED_BYTES) are not
    decoded in the call that passes it: each call decodes about CATCH_UP_STEP bytes of what is pending,
    in order (a bomb stops the decoding at MAX_DECODED_BYTES, after which what is pending is counted at
    once), and `settle` decodes the rest a step per event-loop turn when the body has ended."""

    __slots__ = ("_inflater", "_pending", "data", "encoding", "limit", "overflow", "wire")

    def __init__(self, limit: int, encoding: str | None = None) -> None:
        self.data = bytearray()
        self.limit = limit
        self.overflow = False
        self.encoding = encoding if is_encoded(encoding) else None
        self._inflater: StreamInflater | None = None
        # The chunks past the limit not decoded yet, each as the steps that decode it (StreamInflater.steps).
        self._pending: deque[Iterator[int]] = deque()
        self.wire = 0  # bytes seen past the limit, when not encoded

    def __call__(self, chunk: bytes) -> None:
        if not self.overflow and len(self.data) + len(chunk) <= self.limit:
            self.data += chunk
            return
        if not self.overflow:
            self.overflow = True
            kept, self.data = self.data, bytearray()  # (kept is no longer written to: not copied)
            if self.encoding is not None:
                self._inflater = StreamInflater(self.encoding, _discard)
            self._weigh(kept)
        self._weigh(chunk)
        self.catch_up()

    def _weigh(self, chunk: bytes | bytearray) -> None:
        if self._inflater is None:
            self.wire += len(chunk)
        else:
            self._pending.append(self._inflater.steps(chunk))

    def catch_up(self, step: int = CATCH_UP_STEP) -> bool:
        """Decodes what is pending until about `step` bytes were decoded (a step of the decoder past
        it, at most its _DECODE_STEP); whether some is still pending."""
        pending = self._pending
        done = 0
        while pending:
            for decoded in pending[0]:
                done += decoded
                if done >= step:
                    return True
            pending.popleft()
        return False

    async def settle(self) -> None:
        """Decodes what is still pending, a step per event-loop turn (the body has ended: `size` is
        then what it decodes to)."""
        while self.catch_up():
            await asyncio.sleep(0)

    @property
    def settled(self) -> bool:
        return not self._pending

    @property
    def size(self) -> int:
        """Past the limit: the body's size as decoded so far (its wire size where it was not); what was
        still pending is decoded first (in one call: `settle` beforehand spreads it over the loop's turns)."""
        inflater = self._inflater
        if inflater is None:
            return self.wire
        while self.catch_up():
            pass
        return inflater.decoded + inflater.undecoded


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
        for _ in self.steps(chunk):
            pass

    def steps(self, chunk: bytes | bytearray) -> Iterator[int]:
        """`self(chunk)` in steps: yields the bytes each step decoded (a step of the decoder: at most
        failcore.evidence.body's _DECODE_STEP); it has counted the chunk when it ends. The steps of one
        chunk are taken to their end before another chunk is fed."""
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
                yield len(out)
        except DECODE_ERRORS:
            self.broken = True
        if self.broken or self.decoded >= self.limit:
            self.broken = True
            self.undecoded += len(chunk)  # (of a chunk decoded in part: too much, never too little)
