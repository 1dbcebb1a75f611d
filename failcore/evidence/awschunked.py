"""S3's `aws-chunked` content coding undone as a stream: pure, bounded.

AWS SDKs upload a streamed object (SigV4 streaming: `x-amz-content-sha256: STREAMING-…`,
`x-amz-decoded-content-length`) as `Content-Encoding: aws-chunked` (after the caller's own codings:
boto3 sends `gzip,aws-chunked` for a `ContentEncoding="gzip"` upload). The framing, from Amazon S3's
"Transferring payload in multiple chunks" and "Including trailing headers" pages, and as botocore
writes it (tests/data/aws_chunked holds what it sent):

    chunk      = hex-size [";chunk-signature=" 64 hex] CRLF data CRLF  (a signature: 1 to 64 hex read)
    last-chunk = "0" [";chunk-signature=" 64 hex] CRLF
    trailer    = *(name ":" value CRLF) [, then] CRLF       (`x-amz-checksum-crc32:…`)

Anything else (a size line that is no hex size, an extension that is no chunk signature, a chunk not
ended by CRLF, a size or trailer past the bounds below, bytes after the end, a body ending early) is
a framing error: what decoded so far has been given, the rest is handed on as sent (what a receiver
that does not know the framing reads, so it is scanned too) and ValueError or EOFError is raised, so
the body is never taken as scanned whole (`dlp.unscannable`).

Only the data is given: the framing (sizes, chunk signatures, trailer lines) is not part of the
object. A request's DLP decision scans its wire bytes too (failcore.proxy.dlpguard), framing included.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

# A size line: at most 16 hex digits (a 64-bit size), an optional chunk signature; a line is read
# whole only up to this many bytes.
_SIZE_LINE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;chunk-signature=[0-9A-Fa-f]{1,64})?")
_MAX_LINE: Final = 256
# The trailer: a few checksum or signature lines (botocore sends one of about 45 bytes).
_TRAILER_LINE: Final = re.compile(rb"[!-9;-~]+:[ \t]*[!-~]*[ \t]*")
_MAX_TRAILER: Final = 8 * 1024
_STEP: Final = 256 * 1024

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class AwsChunkedStage:
    """One body's aws-chunked framing, undone as its bytes are fed (the stage interface of
    failcore.evidence.body: `feed` and `finish` yield decoded pieces)."""

    __slots__ = ("left", "line", "state", "trailer")

    def __init__(self) -> None:
        self.state = _SIZE
        self.line = b""  # a line's start, until its CRLF comes
        self.left = 0  # data bytes of the current chunk still to come
        self.trailer = 0  # trailer bytes read

    def feed(self, data: bytes) -> Iterator[bytes]:
        pos = 0
        size = len(data)
        while pos < size:
            if self.state == _DATA:
                end = min(size, pos + self.left, pos + _STEP)
                yield data[pos:end]
                self.left -= end - pos
                pos = end
                if not self.left:
                    self.state = _DATA_END
                continue
            if self.state == _DONE:
                yield data[pos:]
                raise ValueError("data after the end of the aws-chunked body")
            newline = data.find(b"\n", pos, pos + _MAX_LINE + 1 - len(self.line))
            if newline < 0:
                self.line += data[pos:]
                if len(self.line) > _MAX_LINE:
                    yield from self._fail(self.line, "an aws-chunked line is too long")
                return
            line = self.line + data[pos : newline + 1]
            self.line = b""
            pos = newline + 1
            why = self._line(line)
            if why is not None:
                yield from self._fail(line + data[pos:], why)

    def _line(self, line: bytes) -> str | None:
        """Take one CRLF-ended line; why it breaks the framing, or None."""
        if not line.endswith(b"\r\n"):
            return "an aws-chunked line does not end with CRLF"
        text = line[:-2]
        if self.state == _DATA_END:
            if text:
                return "an aws-chunked chunk is longer than its size"
            self.state = _SIZE
        elif self.state == _SIZE:
            match = _SIZE_LINE.fullmatch(text)
            if match is None:
                return "an aws-chunked size line is malformed"
            self.left = int(match.group(1), 16)
            self.state = _DATA if self.left else _TRAILER
        else:  # _TRAILER
            self.trailer += len(line)
            if self.trailer > _MAX_TRAILER:
                return "the aws-chunked trailer is too long"
            if not text:
                self.state = _DONE
            elif _TRAILER_LINE.fullmatch(text) is None:
                return "an aws-chunked trailer line is malformed"
        return None

    def _fail(self, rest: bytes, why: str) -> Iterator[bytes]:
        self.state = _DONE
        if rest:
            yield rest
        raise ValueError(why)

    def finish(self) -> Iterator[bytes]:
        if self.state != _DONE:
            if self.line:
                yield self.line
            raise EOFError("the aws-chunked body ends before its last chunk and trailer (truncated)")
