"""Body evidence: decoding is bounded, and a truncated compressed body is called what it is."""

from __future__ import annotations

import gzip
import random
import zlib

import brotli
import pytest

from failcore.compat import zstd
from failcore.evidence import body_evidence, decode_body, decoded_content, decoded_size_at_most

TEXT = random.Random(3).randbytes(40_000).hex().encode()
ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda b: zstd.compress(b),
}


def evidence(wire: bytes, encoding: str) -> dict:
    ev = body_evidence(
        wire,
        complete=True,
        wire_size=len(wire),
        content_encoding=encoding,
        content_type="text/plain",
        cap=1 << 20,
    )
    assert ev is not None
    return ev


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_a_whole_compressed_body_is_decoded_and_hashed_decoded(encoding) -> None:
    ev = evidence(ENCODERS[encoding](TEXT), encoding)
    assert (ev["text"].encode(), ev["decoded_size"], ev["sha256_of"]) == (TEXT, len(TEXT), "decoded")


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_a_truncated_compressed_body_is_a_decode_error_not_a_shorter_body(encoding) -> None:
    wire = ENCODERS[encoding](TEXT)
    ev = evidence(wire[: len(wire) // 2], encoding)
    assert "decode_error" in ev and "decoded_size" not in ev
    assert ev["sha256_of"] == "wire"


def test_decoded_content_is_bounded_and_falls_back_to_the_wire_bytes() -> None:
    bomb = gzip.compress(b"\0" * (20 << 20))  # 20 MiB of zeros in about 20 KB
    assert len(bomb) < 64 * 1024
    assert decoded_content(bomb, "gzip", 8 << 20) is None, "not inflated past the limit"
    assert decoded_content(bomb, "gzip", 32 << 20) == b"\0" * (20 << 20)
    assert decoded_content(TEXT, None, 10) == TEXT and decoded_content(TEXT, " Identity ", 10) == TEXT
    assert decoded_content(b"not gzip", "gzip", 1 << 20) == b"not gzip"
    assert decoded_content(b"", "gzip", 1) == b""


def test_every_gzip_member_and_every_stacked_coding_is_decoded() -> None:
    # Expected values built with the standard library's own decoders, not failcore's.
    multi = gzip.compress(b"hello ") + gzip.compress(TEXT)
    assert gzip.decompress(multi) == b"hello " + TEXT
    assert decoded_content(multi, "gzip", 1 << 20) == gzip.decompress(multi)
    stacked = brotli.compress(gzip.compress(TEXT))  # gzip applied first, then br: "gzip, br"
    assert decoded_content(stacked, "gzip, br", 1 << 20) == TEXT
    assert decoded_content(stacked, " GZIP ,identity, br ", 1 << 20) == TEXT
    ev = evidence(multi, "gzip")
    assert ev["decoded_size"] == len(b"hello " + TEXT) and ev["text"].encode() == b"hello " + TEXT


def test_decoding_is_bounded_across_members_and_codings() -> None:
    padded = gzip.compress(gzip.compress(b"\0" * (9 << 20)))
    assert decode_body(padded, "gzip, gzip", 8 << 20).over_limit
    assert decoded_size_at_most(brotli.compress(b"\0" * (32 << 20)), "br", 65537) == 65537
    many = gzip.compress(b"x")
    for _ in range(9):
        many = gzip.compress(many)
    assert decode_body(many, ", ".join(["gzip"] * 10), 1 << 20).error is not None


def test_a_body_past_the_decode_limit_is_marked_truncated() -> None:
    ev = evidence(gzip.compress(b" " * ((64 << 20) + 10)), "gzip")
    assert ev["decode_limit_hit"] and ev["truncated"] and ev["sha256_of"] == "wire"


def test_a_large_brotli_body_is_decoded_to_its_end() -> None:
    zeros = b"\0" * (16 << 20)
    wire = brotli.compress(zeros, quality=1)
    assert brotli.decompress(wire) == zeros
    assert decoded_content(wire, "br", 32 << 20) == zeros


@pytest.mark.parametrize(
    ("encoding", "wire"),
    [
        ("x-foo, gzip", gzip.compress(TEXT)),
        ("x-bar, br", brotli.compress(TEXT)),
        ("gzip, x-foo", gzip.compress(TEXT)),
        ("deflate, x-foo, gzip", gzip.compress(zlib.compress(TEXT))),
    ],
)
def test_a_coding_failcore_does_not_know_is_read_as_none_the_others_undone(encoding, wire) -> None:
    """The decision and the tape read the same bytes: what the known codings decode to (review 2,
    finding 3: one unknown coding stopped all decoding and the tape kept the gzip bytes)."""
    decoded = decode_body(wire, encoding, 1 << 20)
    assert decoded.data == TEXT and (decoded.error or "").startswith("UnknownCoding")
    ev = evidence(wire, encoding)
    assert (ev["text"].encode(), ev["decoded_size"], ev["sha256_of"]) == (TEXT, len(TEXT), "wire")
    assert ev["decode_error"].startswith("UnknownCoding") and not ev["truncated"]


def test_a_lone_unknown_coding_is_recorded_as_sent() -> None:
    ev = evidence(TEXT, "x-bar")
    assert ev["text"].encode() == TEXT and ev["sha256_of"] == "wire"
    assert decode_body(TEXT, "x-bar", 1 << 20).data == TEXT
