"""Bodies as tape evidence: decoded within limits (a compression bomb is never inflated whole),
capped, hashed, kept as text or base64.

Pure: bytes in, JSON-ready dicts out; never run inside a proxy hook (see `failcore.proxy.recorder`).
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import brotli

from failcore.compat import zstd
from failcore.evidence.awschunked import AwsChunkedStage
from failcore.evidence.brdecode import BrotliStage
from failcore.evidence.lzw import LzwStage

_TEXT_TYPES: Final = (
    "text/",
    "json",
    "xml",
    "javascript",
    "x-www-form-urlencoded",
    "event-stream",
    "ndjson",
    "yaml",
    "graphql",
)
_DECODE_STEP: Final = 256 * 1024
# A compressed body can expand without bound (a "zip bomb"); decoding to hash or scan it stops here
# and says so (64 MiB: inflating and hashing it takes a fraction of a second, 1 GiB took seconds).
MAX_DECODED_BYTES: Final = 64 << 20
_ZSTD_INPUT_STEP: Final = 1024


def header_value(fields: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """A header's value; several fields of that name are joined by ", " (RFC 9110 5.3), as mitmproxy's
    Headers.get does, so two Content-Encoding headers read as the two codings they stack."""
    n = len(name)  # (bytes.lower keeps the length: most names are passed over without lower-casing)
    values = [value.decode("latin-1") for key, value in fields if len(key) == n and key.lower() == name]
    return ", ".join(values) if values else None


def framing_headers(fields: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """(the body's codings, Content-Type) as header_value gives each, read in one pass over the fields
    (a name is lower-cased only when its length is one of the four's). The codings are body_encoding's:
    the Content-Encoding's, S3's aws-chunked when `x-amz-content-sha256` names a streaming payload,
    then a Transfer-Encoding's other than `chunked`."""
    encodings: list[str] = []
    transfers: list[str] = []
    types: list[str] = []
    amz: list[str] = []
    for key, value in fields:
        n = len(key)
        if n == 16:
            if key.lower() == b"content-encoding":
                encodings.append(value.decode("latin-1"))
        elif n == 12:
            if key.lower() == b"content-type":
                types.append(value.decode("latin-1"))
        elif n == 17:
            if key.lower() == b"transfer-encoding":
                transfers.append(value.decode("latin-1"))
        elif n == 20 and key.lower() == b"x-amz-content-sha256":
            amz.append(value.decode("latin-1"))
    encoding = ", ".join(encodings) if encodings else None
    if transfers or amz:
        encoding = body_encoding(encoding, ", ".join(transfers) or None, ", ".join(amz))
    return (encoding, ", ".join(types) if types else None)


def aws_streaming(content_sha256: str | None) -> bool:
    """Whether an `x-amz-content-sha256` value names an S3 streaming upload (`STREAMING-AWS4-HMAC-SHA256-
    PAYLOAD`, `STREAMING-UNSIGNED-PAYLOAD-TRAILER`, …): S3 servers read such a body as aws-chunked from
    this header alone (MinIO's isRequestSignStreamingV4), whatever Content-Encoding says."""
    return content_sha256 is not None and "streaming-" in content_sha256.lower()


def transfer_codings(value: str | None) -> list[str]:
    """A Transfer-Encoding value's codings other than `chunked`, in the order they were applied:
    mitmproxy undoes only the chunked framing (and forwards `gzip, chunked`, `deflate, chunked`,
    `compress, chunked` in a request, `gzip` & co. in a response, with the header as it is), so the
    body it holds still carries these and its receiver undoes them."""
    return [c for c in content_encodings(value) if c != "chunked"]


def body_encoding(
    content_encoding: str | None, transfer_encoding: str | None, content_sha256: str | None = None
) -> str | None:
    """The codings of a body as mitmproxy holds it (de-chunked), in the order applied, comma-joined
    as a Content-Encoding value: the Content-Encoding's; S3's `aws-chunked` framing when the
    `x-amz-content-sha256` value (`content_sha256`) names a streaming upload and Content-Encoding does
    not (aws_streaming: the server undoes it all the same); then the Transfer-Encoding's other than
    `chunked` (RFC 9112 6.1: transfer codings are applied to the content-coded representation)."""
    transfers = transfer_codings(transfer_encoding)
    codings = content_encodings(content_encoding)
    framed = aws_streaming(content_sha256) and "aws-chunked" not in codings
    if not transfers and not framed:
        return content_encoding
    return ", ".join([*codings, *(["aws-chunked"] if framed else []), *transfers])


# More stacked encodings than this is not a real client's body; it is refused as undecodable.
MAX_ENCODINGS: Final = 8


def content_encodings(value: str | None) -> list[str]:
    """A Content-Encoding value (several headers joined by ", ") as the codings in the order they were
    applied; `identity` is no coding."""
    codings = [c.strip().lower() for c in (value or "").split(",")]
    return [c for c in codings if c and c != "identity"]


def deflate_wbits(head: bytes) -> int:
    """The wbits that decode a `deflate` body opening with `head` (at least its first 2 bytes): a zlib
    stream (RFC 1950 2.2: compression method 8, a window of at most 32 KiB, the header check FCHECK) of
    any window size, not only 0x78 (a 32 KiB window); raw deflate (RFC 1951) otherwise, as some servers
    send it. (MAX_WBITS decodes a zlib stream of any smaller window too.)"""
    if len(head) >= 2 and head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (head[0] << 8 | head[1]) % 31 == 0:
        return zlib.MAX_WBITS
    return -zlib.MAX_WBITS


# Input handed to zlib in one call: what a corrupt stream decoded to before its error is salvaged by
# feeding the failing call's input again byte by byte from a copy of the state before it (_inflate).
_INFLATE_INPUT_STEP: Final = 64 * 1024


def _inflate(z: Any, data: bytes, salvage: bool = True) -> tuple[bytes, Exception | None]:
    """`z.decompress(data, _DECODE_STEP)`, and on an error what `data` decoded to before it (a zlib
    error drops the output of the whole call: a streaming receiver has that output, a secret with it).
    Returns (the output, the error or None). Without `salvage` (a reader that only counts, and counts
    a failing input by its wire bytes) the state is not copied first: that copy is most of the cost
    of a stream of small chunks."""
    saved = z.copy() if salvage else None
    try:
        return z.decompress(data, _DECODE_STEP), None
    except zlib.error as e:
        error = e
    if saved is None:
        return b"", error
    out = bytearray()
    for i in range(len(data)):
        try:
            out += saved.decompress(data[i : i + 1], _DECODE_STEP - len(out))
        except zlib.error:
            break
        if len(out) >= _DECODE_STEP or saved.eof:
            break
    return bytes(out), error


class _ZlibStage:
    """gzip (every member of a multi-member body, RFC 1952 2.2) or deflate (zlib or raw)."""

    def __init__(self, coding: str, salvage: bool = True) -> None:
        self.coding = coding
        self.salvage = salvage
        self.gzip = coding != "deflate"
        self.z: Any = None
        self.members = 0
        self.head = b""  # a deflate body's first byte, until its second says whether it is zlib

    def feed(self, data: bytes) -> Iterator[bytes]:
        pos = 0
        pending = b""  # input handed to zlib next: a piece of `data`, or what the last call left
        drain = False  # the last call filled its output: call again, input or not
        while True:
            if not pending and not drain:
                if pos >= len(data):
                    return
                pending = data[pos : pos + _INFLATE_INPUT_STEP]
                pos += len(pending)
            if self.z is None:
                if self.members and not self.gzip:
                    raise ValueError("data after the end of the deflate stream")
                if self.gzip:
                    wbits = zlib.MAX_WBITS | 16
                else:
                    pending = self.head + pending
                    if len(pending) < 2:
                        self.head = pending
                        return
                    self.head = b""
                    wbits = deflate_wbits(pending)
                self.z = zlib.decompressobj(wbits)
            z = self.z
            out, error = _inflate(z, pending, self.salvage)
            if out:
                yield out
            if error is not None:
                raise error
            if z.eof:
                pending = z.unused_data  # the next gzip member, if any
                drain = False
                self.z = None
                self.members += 1
                continue
            pending = z.unconsumed_tail
            drain = not pending and len(out) >= _DECODE_STEP

    def finish(self) -> Iterator[bytes]:
        if self.head:
            raise EOFError(f"{self.coding} stream ends before its end marker (truncated)")
        if self.z is None:
            return
        out = self.z.flush()
        if out:
            yield out
        if not self.z.eof:
            raise EOFError(f"{self.coding} stream ends before its end marker (truncated)")


class _ZstdStage:
    # Fed in small pieces with a bounded output per call (a zstd block expands at most ~32,000x);
    # a body may hold several frames, and a last frame without its end is a truncation.
    def __init__(self) -> None:
        self.frame = zstd.ZstdDecompressor()
        self.fed = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        for i in range(0, len(data), _ZSTD_INPUT_STEP):
            piece = data[i : i + _ZSTD_INPUT_STEP]
            while piece:
                self.fed = True
                yield self.frame.decompress(piece, _DECODE_STEP)
                while not self.frame.eof and not self.frame.needs_input:
                    yield self.frame.decompress(b"", _DECODE_STEP)
                if not self.frame.eof:
                    break
                piece = self.frame.unused_data  # the next frame
                self.frame, self.fed = zstd.ZstdDecompressor(), False

    def finish(self) -> Iterator[bytes]:
        if self.fed and not self.frame.eof:
            raise EOFError("zstd stream ends before its frame does (truncated)")
        return iter(())


# The codings failcore decodes (S3's `aws-chunked` framing too; `compress` is LZW, failcore.evidence.lzw);
# any other (a made-up `x-foo`) is read as no coding.
_CODINGS = ("gzip", "x-gzip", "deflate", "br", "zstd", "compress", "x-compress", "aws-chunked")
DECODED_CODINGS: Final = frozenset(_CODINGS)


class UnknownCoding(ValueError):
    """A body's Content-Encoding names a coding failcore does not decode: decoded_steps raises it once
    it has given what the body decodes to with that coding read as no coding (`codings`: the unknown
    ones, comma-joined)."""

    def __init__(self, codings: list[str]) -> None:
        self.codings = ", ".join(codings)
        super().__init__(f"content-encoding {self.codings!r} is not decoded (read as no coding)")


_Stage = _ZlibStage | BrotliStage | _ZstdStage | LzwStage | AwsChunkedStage


def _stage(coding: str, salvage: bool = True) -> _Stage:
    if coding in ("gzip", "x-gzip", "deflate"):
        return _ZlibStage(coding, salvage)
    if coding == "aws-chunked":
        return AwsChunkedStage()
    if coding == "br":
        return BrotliStage(_DECODE_STEP)
    if coding == "zstd":
        return _ZstdStage()
    if coding in ("compress", "x-compress"):
        return LzwStage(_DECODE_STEP)  # (what decoded before an error is always given: no salvage to do)
    raise ValueError(f"unsupported content-encoding {coding!r}")


def decoded_steps(data: bytes, encoding: str | None) -> Iterator[bytes]:
    """Decode in bounded steps so a small compressed body can never balloon memory. Every coding of a
    stacked `Content-Encoding` (`gzip, br`; two headers) is undone, last applied first, and every
    member of a multi-member gzip body or frame of a zstd body is decoded, as servers do.

    A coding failcore does not decode is read as no coding, the known ones around it undone still
    (`aws-chunked, gzip`: Apache's mod_deflate inflates a last `gzip` whatever precedes it), and
    UnknownCoding is raised once all of that was given: a stack with one is never scanned as sent only."""
    codings = content_encodings(encoding)
    if len(codings) > MAX_ENCODINGS:
        raise ValueError(f"{len(codings)} stacked content-encodings (at most {MAX_ENCODINGS} are decoded)")
    unknown = [c for c in codings if c not in DECODED_CODINGS]
    if unknown:
        codings = [c for c in codings if c in DECODED_CODINGS]
    if not codings:
        if data:
            yield data
        if unknown:
            raise UnknownCoding(unknown)
        return
    stages = [_stage(c) for c in reversed(codings)]

    def push(level: int, piece: bytes) -> Iterator[bytes]:
        if level == len(stages):
            if piece:
                yield piece
            return
        for out in stages[level].feed(piece):
            yield from push(level + 1, out)

    yield from push(0, data)
    for level, stage in enumerate(stages):
        for out in stage.finish():
            yield from push(level + 1, out)
    if unknown:
        raise UnknownCoding(unknown)


def decoded_content(raw: bytes | None, encoding: str | None, limit: int) -> bytes | None:
    """A whole body decoded per its Content-Encoding, or None when it would decode to more than
    `limit` bytes (a decompression bomb must not be inflated to read a model name). A body that does
    not decode is returned as it is, as mitmproxy's get_content(strict=False) does."""
    if not raw or not is_encoded(encoding):
        return raw
    decoded = decode_body(raw, encoding, limit)
    if decoded.over_limit:
        return None
    return raw if decoded.error is not None else decoded.data


DECODE_ERRORS: Final = (zlib.error, brotli.error, zstd.ZstdError, ValueError, EOFError)


@dataclass(frozen=True, slots=True)
class DecodedBody:
    """A body decoded within a limit: `data` is all of it, or what was decoded before the limit
    (`over_limit`) or before it stopped decoding (`error`)."""

    data: bytes
    over_limit: bool = False
    error: str | None = None


def decode_body(raw: bytes, encoding: str | None, limit: int) -> DecodedBody:
    if not is_encoded(encoding):
        return DecodedBody(raw)
    out = bytearray()
    try:
        for piece in decoded_steps(raw, encoding):
            out += piece
            if len(out) > limit:
                return DecodedBody(bytes(out[:limit]), over_limit=True)
    except DECODE_ERRORS as e:
        return DecodedBody(bytes(out), error=f"{type(e).__name__}: {e}"[:200])
    return DecodedBody(bytes(out))


def decoded_size_at_most(raw: bytes, encoding: str | None, limit: int) -> int:
    """How many bytes `raw` decodes to, counted only up to `limit` (a bounded probe: a bomb is not
    inflated to weigh it). A body that does not decode weighs its wire size."""
    if not is_encoded(encoding):
        return len(raw)
    total = 0
    try:
        for piece in decoded_steps(raw, encoding):
            total += len(piece)
            if total >= limit:
                return limit
    except DECODE_ERRORS:
        return max(total, len(raw))
    return total


# Decoded size past which a compressed body is not inflated on the event loop / at all (to read it
# whole for metering or a pre-forward DLP decision).
ON_LOOP_DECODE_LIMIT: Final = 8 << 20
DECODE_LIMIT: Final = 64 << 20


def is_encoded(encoding: str | None) -> bool:
    return bool(content_encodings(encoding))


def read_off_loop(size: int, encoding: str | None, threshold: int) -> bool:
    """Whether a body of `size` wire bytes is read in a worker thread: past `threshold`, or past a
    sixteenth of it when compressed (it could inflate past ON_LOOP_DECODE_LIMIT)."""
    return size > (threshold // 16 if is_encoded(encoding) else threshold)


def looks_textual(content_type: str | None, sample: bytes) -> bool:
    if content_type and any(t in content_type.lower() for t in _TEXT_TYPES):
        return True
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as e:
        # A prefix cut inside a multi-byte character is still text.
        if e.start < len(sample) - 3:
            return False
    return True


def body_evidence(
    data: bytes,
    *,
    complete: bool,
    wire_size: int,
    content_encoding: str | None,
    content_type: str | None,
    cap: int,
    wire_sha256: str | None = None,
) -> dict[str, Any] | None:
    """Evidence for one body.

    `data` is the whole body as received (`complete`) or the first bytes of a streamed one, whose full
    size and sha256 (`wire_sha256`) were counted while it passed. Returns None for an absent body.
    """
    if wire_size == 0 and not data:
        return None
    encoding = ", ".join(content_encodings(content_encoding)) or None
    ev: dict[str, Any] = {"size": wire_size, "cap": cap}
    decoded_prefix = data
    if encoding:
        ev["encoding"] = encoding
        digest = hashlib.sha256()
        kept = bytearray()
        total = 0
        try:
            for piece in decoded_steps(data, encoding):
                total += len(piece)
                if complete:
                    digest.update(piece)
                if len(kept) < cap:
                    kept += piece[: cap - len(kept)]
                if total >= MAX_DECODED_BYTES:
                    ev["decode_limit_hit"] = True
                    break
                if not complete and len(kept) >= cap:
                    break
        except UnknownCoding as e:
            # What the known codings decode to is recorded (and masked), never the bytes as sent: a
            # secret under `x-foo, gzip` would stay recoverable from them.
            if complete:
                ev["decode_error"] = f"{type(e).__name__}: {e}"
                ev["decoded_size"] = total  # (of what is recorded: the unknown codings read as none)
            decoded_prefix = bytes(kept)
        except DECODE_ERRORS as e:
            if complete:
                ev["decode_error"] = f"{type(e).__name__}: {e}"
                if kept or _as_text(data[:cap], None) is None:
                    # What decoded before the error is recorded (and masked), never the bytes as sent: a
                    # truncated or corrupt stream still inflates, step by step, to the secret it holds.
                    # (A body that is plain text, not in its coding at all, is recorded as sent.)
                    ev["wire_dropped"] = True
                    decoded_prefix = bytes(kept)
        if "decode_error" in ev:
            ev["sha256"] = wire_sha256 or hashlib.sha256(data).hexdigest()
            ev["sha256_of"] = "wire"
        else:
            decoded_prefix = bytes(kept)
            if complete and not ev.get("decode_limit_hit"):
                ev["decoded_size"] = total
                ev["sha256"] = digest.hexdigest()
                ev["sha256_of"] = "decoded"
            else:
                ev["sha256"] = wire_sha256 or hashlib.sha256(data).hexdigest()
                ev["sha256_of"] = "wire"
    else:
        ev["sha256"] = wire_sha256 or hashlib.sha256(data).hexdigest()
        ev["sha256_of"] = "decoded"
    full_len = ev.get("decoded_size", wire_size)
    shown = decoded_prefix[:cap]
    ev["truncated"] = (
        len(shown) < full_len
        or (not complete and len(shown) < wire_size)
        or bool(ev.get("decode_limit_hit") or ev.get("wire_dropped"))
    )
    text = _as_text(shown, content_type)
    if text is not None:
        ev["text"] = text
    else:
        ev["binary"] = True
        ev["b64"] = base64.b64encode(shown).decode("ascii")
    return ev


def _as_text(data: bytes, content_type: str | None) -> str | None:
    """Text only when it round-trips to the same bytes (replay serves it back byte for byte)."""
    if not looks_textual(content_type, data[:4096]):
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        # A cap that cut a multi-byte character leaves valid text before it; anything else is binary.
        if e.start >= len(data) - 3 and e.reason in ("unexpected end of data", "invalid continuation byte"):
            try:
                return data[: e.start].decode("utf-8")
            except UnicodeDecodeError:
                return None
        return None
