"""Body evidence: decoding is bounded, and a truncated compressed body is called what it is."""

from __future__ import annotations

import gzip
import random
import zlib

import brotli
import pytest

from failcore.compat import zstd
from failcore.evidence import body_evidence, decoded_content

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
