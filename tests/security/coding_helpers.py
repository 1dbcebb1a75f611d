"""What a tape reader can recover from a recorded body that was compressed: every body the tape holds,
inflated the way a streaming receiver inflates it (one byte at a time, keeping what came out before an
error), with gzip, zlib, raw deflate, brotli and zstd, and LZW (`compress`) by `gzip -dc`. Independent
of failcore's decoders.

The codings a test applies itself (`encode_stack`, with the libraries' own encoders).

And S3's aws-chunked framing as AWS clients write it (checked against what botocore sent, recorded in
tests/data/aws_chunked)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import brotli

from failcore.compat import zstd
from tests.helpers import read_tape
from tests.lzw_helpers import gzip_dc, lzw_compress
from tests.security.helpers import tape_bytes

# Each coding with its library's encoder (gzip without a timestamp: the same bytes every run);
# `x-unknown` is a coding failcore does not know (the bytes left as they are).
ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda b: gzip.compress(b, mtime=0),
    "x-gzip": lambda b: gzip.compress(b, mtime=0),
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstd.compress,
    "x-unknown": lambda b: b,
    "compress": lzw_compress,
    "x-compress": lzw_compress,
}


def encode_stack(body: bytes, codings: str | None) -> bytes:
    """`body` under `codings` as a Content-Encoding or Transfer-Encoding lists them, first applied first;
    `chunked` is framing, left to the caller."""
    for coding in (c.strip() for c in (codings or "").split(",")):
        if coding and coding != "chunked":
            body = ENCODERS[coding](body)
    return body


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
    found.extend(lzw_inflations(data))
    return found


def lzw_inflations(data: bytes) -> list[bytes]:
    """What `gzip -dc` (gzip's own LZW decoder, unlzw.c) makes of `data` from each compress magic
    (1f 9d) in it on: all it wrote before an error too."""
    found = []
    start = data.find(b"\x1f\x9d")
    while start >= 0:
        decoded = gzip_dc(data[start:])
        if decoded is None:
            raise RuntimeError("gzip is needed to read a compress stream on the tape")
        found.append(decoded[0])
        start = data.find(b"\x1f\x9d", start + 1)
    return found


def _decoded_runs(data: bytes) -> list[bytes]:
    """The base64 (standard or URL-safe, line-wrapped too) and hex runs of `data` decoded, as a reader
    of the tape would decode them."""
    found = []
    for run in re.findall(rb"[A-Za-z0-9+/=_\-\s\\n]{24,}", data):
        run = re.sub(rb"\s|\\n", b"", run)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            with contextlib.suppress(binascii.Error, ValueError):
                found.append(decode(run + b"=" * (-len(run) % 4)))
        if re.fullmatch(rb"[0-9a-fA-F]+", run) and len(run) % 2 == 0:
            found.append(binascii.unhexlify(run))
    return found


def recoverable(tape: Path) -> list[bytes]:
    """Every body the tape holds, as stored, as every decoder recovers it, and with its base64 or hex
    runs decoded (in each of those forms): what a reader of the tape can get back."""
    found = [tape_bytes(tape)]
    for event in read_tape(tape):
        for body in _bodies(event):
            data = base64.b64decode(body["b64"]) if "b64" in body else body["text"].encode()
            forms = [data, *inflations(data)]
            found.extend(forms)
            for form in forms:
                found.extend(_decoded_runs(form))
    return found


def recoverable_from_tape(tape: Path, secret: bytes) -> bool:
    """Whether `secret` can be read back from the tape (recoverable)."""
    return any(secret in data for data in recoverable(tape))


BOTO3_FIXTURE = Path(__file__).resolve().parents[1] / "data" / "aws_chunked" / "boto3_put_object.json"


def boto3_fixture() -> dict[str, Any]:
    """What botocore sent for two S3 PutObject calls (see tests/data/aws_chunked/record.py): each
    request's headers and body, and the document it uploaded with its placeholder."""
    fixture = json.loads(BOTO3_FIXTURE.read_text())
    for request in fixture["requests"]:
        request["body"] = base64.b64decode(request["body_b64"])
        request["header"] = {name.lower(): value for name, value in request["headers"]}
    return fixture


def crc32_trailer(data: bytes) -> bytes:
    """botocore's trailing checksum line: the CRC-32 of the data, big-endian, base64."""
    return b"x-amz-checksum-crc32:" + base64.b64encode(zlib.crc32(data).to_bytes(4, "big")) + b"\r\n"


def aws_chunked(data: bytes, size: int, *, trailer: bytes = b"", signed: bool = False) -> bytes:
    """`data` in aws-chunked framing, `size` bytes a chunk (Amazon S3's "Transferring payload in
    multiple chunks": `hex-size;chunk-signature=sig CRLF data CRLF`, a zero-size last chunk, trailer
    lines, CRLF). Unsigned (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`) as botocore writes it; `signed` puts a
    64-hex signature on each chunk (a stand-in: no receiver here checks it)."""
    out = bytearray()
    for start in [*range(0, len(data), size), len(data)]:
        chunk = data[start : start + size]
        signature = b";chunk-signature=" + hashlib.sha256(chunk).hexdigest().encode() if signed else b""
        out += b"%x%s\r\n" % (len(chunk), signature)
        if not chunk:
            break
        out += chunk + b"\r\n"
    return bytes(out) + trailer + b"\r\n"
