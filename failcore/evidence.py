"""Turn raw HTTP parts into tape evidence: redacted headers and capped, decoded, hashed bodies.

Everything here runs in the tape writer's thread (see `Recorder`), never on the proxy's event loop,
and is pure: bytes in, JSON-ready dicts out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, Final

import brotli

from failcore.compat import zstd

CREDENTIAL_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
# Schemes worth keeping in clear: they say how a client authenticated without saying with what.
_AUTH_SCHEMES: Final = frozenset({"bearer", "basic", "digest", "token", "negotiate", "aws4-hmac-sha256"})
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
# A compressed body can expand without bound (a "zip bomb"); hashing stops here and says so.
MAX_DECODED_BYTES: Final = 1 << 30
_ZSTD_INPUT_STEP: Final = 1024


def fingerprint(value: bytes, salt: bytes) -> str:
    return "hmac-sha256:" + hmac.new(salt, value, hashlib.sha256).hexdigest()[:24]


def _redact_value(name: str, raw: bytes, salt: bytes) -> str:
    scheme, _, rest = raw.partition(b" ")
    if rest and scheme.decode("latin-1").lower() in _AUTH_SCHEMES and name.endswith("authorization"):
        return f"{scheme.decode('latin-1')} [redacted {fingerprint(rest.strip(), salt)}]"
    return f"[redacted {fingerprint(raw, salt)}]"


def redact_headers(
    fields: Iterable[tuple[bytes, bytes]], extra: frozenset[str], salt: bytes
) -> list[list[str]]:
    """Headers as [name, value] pairs in wire order, credentials replaced by a salted fingerprint."""
    out: list[list[str]] = []
    for raw_name, raw_value in fields:
        name = raw_name.decode("latin-1")
        lower = name.lower()
        if lower in CREDENTIAL_HEADERS or lower in extra:
            out.append([name, _redact_value(lower, raw_value, salt)])
        else:
            out.append([name, raw_value.decode("utf-8", "backslashreplace")])
    return out


def header_value(fields: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in fields:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def decoded_steps(data: bytes, encoding: str) -> Iterator[bytes]:
    """Decode in bounded steps so a small compressed body can never balloon memory."""
    if encoding in ("gzip", "x-gzip", "deflate"):
        if encoding == "deflate" and data[:1] != b"\x78":
            wbits = -zlib.MAX_WBITS  # raw deflate, as some servers send it
        else:
            wbits = zlib.MAX_WBITS | (16 if encoding != "deflate" else 0)
        z = zlib.decompressobj(wbits)
        pending = data
        while pending:
            out = z.decompress(pending, _DECODE_STEP)
            pending = z.unconsumed_tail
            yield out
            if z.eof:
                return
        yield z.flush()
        if not z.eof:
            raise EOFError(f"{encoding} stream ends before its end marker (truncated)")
    elif encoding == "br":
        b = brotli.Decompressor()
        yield b.process(data, output_buffer_limit=_DECODE_STEP)
        while not b.can_accept_more_data() and not b.is_finished():
            yield b.process(b"", output_buffer_limit=_DECODE_STEP)
        if not b.is_finished():
            raise EOFError("br stream ends before its end marker (truncated)")
    elif encoding == "zstd":
        yield from _zstd_steps(data)
    else:
        raise ValueError(f"unsupported content-encoding {encoding!r}")


def _zstd_steps(data: bytes) -> Iterator[bytes]:
    # Fed in small pieces with a bounded output per call (a zstd block expands at most ~32,000×);
    # a body may hold several frames, and a last frame without its end is a truncation.
    frame = zstd.ZstdDecompressor()
    fed = False
    for i in range(0, len(data), _ZSTD_INPUT_STEP):
        piece = data[i : i + _ZSTD_INPUT_STEP]
        while piece:
            fed = True
            yield frame.decompress(piece, _DECODE_STEP)
            while not frame.eof and not frame.needs_input:
                yield frame.decompress(b"", _DECODE_STEP)
            if not frame.eof:
                break
            piece = frame.unused_data  # the next frame
            frame, fed = zstd.ZstdDecompressor(), False
    if fed and not frame.eof:
        raise EOFError("zstd stream ends before its frame does (truncated)")


def decoded_content(raw: bytes | None, encoding: str | None, limit: int) -> bytes | None:
    """A whole body decoded per its Content-Encoding, or None when it would decode to more than
    `limit` bytes (a decompression bomb must not be inflated to read a model name). A body that does
    not decode is returned as it is, as mitmproxy's get_content(strict=False) does."""
    if not raw:
        return raw
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return raw
    out = bytearray()
    try:
        for piece in decoded_steps(raw, encoding):
            out += piece
            if len(out) > limit:
                return None
    except (zlib.error, brotli.error, zstd.ZstdError, ValueError, EOFError):
        return raw
    return bytes(out)


# Decoded size past which a compressed body is not inflated on the event loop / at all (to read it
# whole for metering or a pre-forward DLP decision).
ON_LOOP_DECODE_LIMIT: Final = 8 << 20
DECODE_LIMIT: Final = 64 << 20


def is_encoded(encoding: str | None) -> bool:
    return (encoding or "").strip().lower() not in ("", "identity")


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
    encoding = (content_encoding or "").strip().lower() or None
    if encoding == "identity":
        encoding = None
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
        except (zlib.error, brotli.error, zstd.ZstdError, ValueError, EOFError) as e:
            if complete:
                ev["decode_error"] = f"{type(e).__name__}: {e}"
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
    ev["truncated"] = len(shown) < full_len or (not complete and len(shown) < wire_size)
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
