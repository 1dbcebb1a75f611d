"""S3's aws-chunked framing undone (failcore.evidence.awschunked), checked against what botocore sent
(tests/data/aws_chunked) and the framing of Amazon S3's SigV4 streaming pages."""

from __future__ import annotations

import gzip

import pytest

from failcore.evidence.awschunked import AwsChunkedStage
from failcore.evidence.body import decode_body, decoded_steps
from tests.security.coding_helpers import aws_chunked, boto3_fixture, crc32_trailer

FIXTURE = boto3_fixture()
DOCUMENT = FIXTURE["document"].encode()


def test_the_test_writer_writes_what_botocore_sent() -> None:
    """The framing the attack tests build is botocore's, byte for byte."""
    plain, zipped = FIXTURE["requests"]
    assert aws_chunked(DOCUMENT, 16, trailer=crc32_trailer(DOCUMENT)) == plain["body"]
    wire = gzip.compress(DOCUMENT, mtime=0)
    assert aws_chunked(wire, len(wire), trailer=crc32_trailer(wire)) == zipped["body"]


@pytest.mark.parametrize("index", [0, 1])
def test_what_botocore_sent_decodes_to_the_document(index: int) -> None:
    request = FIXTURE["requests"][index]
    decoded = decode_body(request["body"], request["header"]["content-encoding"], 1 << 20)
    assert decoded.error is None and decoded.data == DOCUMENT
    assert len(DOCUMENT) == int(request["header"]["x-amz-decoded-content-length"]) or index == 1


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 16])
def test_signed_chunks_of_any_size_decode_fed_in_any_pieces(size: int) -> None:
    wire = aws_chunked(DOCUMENT, size, signed=True)
    assert b";chunk-signature=" in wire
    for piece in (1, 5, 1 << 20):
        out = b""
        stage = AwsChunkedStage()
        for start in range(0, len(wire), piece):
            out += b"".join(stage.feed(wire[start : start + piece]))
        out += b"".join(stage.finish())
        assert out == DOCUMENT


# name: (body, what decoded before the error: the rest follows as sent)
MALFORMED = {
    "no hex size": (b"zz\r\nabc\r\n0\r\n\r\n", b""),
    "other extension": (b"3;x=1\r\nabc\r\n0\r\n\r\n", b""),
    "bare LF": (b"3\nabc\r\n0\r\n\r\n", b""),
    "size line too long": (b"3" + b"0" * 300 + b"\r\n", b""),
    "size past 64 bits": (b"1" + b"0" * 16 + b"\r\nabc", b""),
    "chunk longer than its size": (b"3\r\nabcd\r\n0\r\n\r\n", b"abc"),
    "data after the end": (b"3\r\nabc\r\n0\r\n\r\nmore", b"abc"),
    "trailer line without a colon": (b"3\r\nabc\r\n0\r\nno colon here\r\n\r\n", b"abc"),
    "trailer too long": (b"3\r\nabc\r\n0\r\n" + (b"x-amz-a:" + b"b" * 200 + b"\r\n") * 50, b"abc"),
    "truncated in a chunk": (b"10\r\nabc", b"abc"),
    "no last chunk": (b"3\r\nabc\r\n", b"abc"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_framing_error_raises_and_hands_on_the_rest_as_sent(name: str) -> None:
    wire, data = MALFORMED[name]
    decoded = decode_body(wire, "aws-chunked", 1 << 20)
    assert decoded.error is not None, "never taken as decoded whole"
    assert decoded.data.startswith(data)
    rest = decoded.data[len(data) :]
    assert wire.endswith(rest) and (rest or name.startswith(("truncated", "no last"))), "the rest as sent"


def test_a_stack_with_aws_chunked_is_undone_in_order() -> None:
    zipped = gzip.compress(DOCUMENT)
    assert b"".join(decoded_steps(aws_chunked(zipped, 10), "gzip, aws-chunked")) == DOCUMENT
    assert b"".join(decoded_steps(gzip.compress(aws_chunked(DOCUMENT, 10)), "aws-chunked, gzip")) == DOCUMENT
