"""The stream meter's decoding reuses failcore.evidence's (pastcap.StreamDecoder): any stack of the codings
failcore decodes is undone, in order, at any chunk boundary, in bounded pieces; what it cannot undo is
counted by its wire bytes. And `weighed`, what a budget weighs a body it could not read by."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from failcore.evidence.pastcap import StreamDecoder
from failcore.llm import SseUsageTracker
from failcore.proxy.streamcopy import StreamInflater, WholeBodyCopy, weighed
from tests.security.coding_helpers import encode_stack

TEXT = "The quick brown fox jumps over the lazy dog. " * 40


def _sse(text: str = TEXT) -> bytes:
    chunks = [
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": text[i : i + 7]}, "finish_reason": None}],
        }
        for i in range(0, len(text), 7)
    ]
    return ("".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n").encode()


STACKS = ["gzip, br", "deflate, gzip", "br, zstd, gzip", "x-gzip, deflate", "gzip, gzip", "zstd, br"]


@pytest.mark.parametrize("codings", STACKS)
@pytest.mark.parametrize("piece", [1, 7, 100, 1 << 20])
def test_a_stack_of_codings_is_undone_at_any_chunk_boundary(codings: str, piece: int) -> None:
    wire = encode_stack(_sse(), codings)
    tracker = SseUsageTracker("openai", "chat_completions")
    inflate = StreamInflater(codings, tracker.feed)
    for i in range(0, len(wire), piece):
        inflate(wire[i : i + piece])
    tracker.finish()
    assert not inflate.broken and inflate.undecoded == 0
    assert tracker.generated_chars == len(TEXT)
    assert tracker.response_model == "gpt-4o-mini"


@pytest.mark.parametrize(
    "codings", ["x-unknown", "gzip, x-unknown", "x-unknown, br", ", ".join(["gzip"] * 9)]
)
def test_a_stack_it_cannot_undo_is_counted_by_its_wire_bytes(codings: str) -> None:
    """A coding failcore does not decode (or more stacked codings than it decodes): nothing is read,
    every wire byte is counted."""
    seen: list[bytes] = []
    inflate = StreamInflater(codings, seen.append)
    wire = gzip.compress(_sse())
    for i in range(0, len(wire), 100):
        inflate(wire[i : i + 100])
    assert inflate.broken and seen == [] and inflate.undecoded == len(wire)


def test_input_that_stops_decoding_is_counted_from_the_chunk_where_it_stopped() -> None:
    wire = encode_stack(_sse(), "gzip, br")
    good, bad = wire[: len(wire) // 2], b"\xff" * 500
    out = bytearray()
    inflate = StreamInflater("gzip, br", out.extend)
    inflate(good)
    decoded_before = len(out)
    inflate(bad)
    inflate(b"more")
    assert inflate.broken and inflate.undecoded == len(bad) + 4
    assert 0 < decoded_before <= len(out) < len(_sse())  # what decoded was handed on, never a wrong usage
    assert bytes(out) == _sse()[: len(out)]


def test_a_stacked_bomb_is_handed_on_in_bounded_pieces() -> None:
    plain = b"\n" * (32 << 20)
    bomb = encode_stack(plain, "gzip, br")
    assert len(bomb) < 64 * 1024
    steps: list[int] = []
    inflate = StreamInflater("gzip, br", lambda out: steps.append(len(out)))
    inflate(bomb)
    assert sum(steps) == len(plain) and max(steps) <= 64 * 1024


def test_weighed() -> None:
    body = b'{"text": "' + b"a" * 5000 + b'"}'
    wire = encode_stack(body, "gzip, br")
    assert weighed(wire, "gzip, br", 1 << 20) == (body, len(body), False)
    assert weighed(body, None, 10) == (body, len(body), False)  # not encoded: its size, read
    assert weighed(wire, "gzip, br", 100) == (None, 100, True)  # past the limit: the limit
    # A coding failcore does not undo: the body as it is for the reader, weighed as far as it decodes.
    gz = gzip.compress(body)
    assert weighed(gz, "gzip, x-unknown", 1 << 20) == (gz, len(body), True)
    assert weighed(gz, "x-unknown, br", 1 << 20) == (gz, len(gz), True)
    assert weighed(b"", "gzip", 10) == (b"", 0, False)


def test_decoding_stops_at_the_limit_and_counts_the_rest_by_its_wire_bytes() -> None:
    plain = b"a" * (1 << 20)
    wire = encode_stack(plain, "br, gzip")
    handed: list[int] = []
    inflate = StreamInflater("br, gzip", lambda out: handed.append(len(out)), limit=100_000)
    inflate(wire[:10])
    inflate(wire[10:])
    inflate(b"later")
    assert inflate.broken and 100_000 <= inflate.decoded == sum(handed) < len(plain)
    assert inflate.undecoded == len(wire) - 10 + 5  # the chunk it stopped in, and what followed


@pytest.mark.parametrize("codings", [None, "gzip, br", "x-unknown"])
def test_a_copy_past_its_limit_is_weighed_as_it_decodes(codings: str | None) -> None:
    plain = b'{"text": "' + b"z" * 50_000 + b'"}'
    wire = encode_stack(plain, codings) if codings and codings != "x-unknown" else plain
    copy = WholeBodyCopy(50, codings)
    for i in range(0, len(wire), 30):
        copy(wire[i : i + 30])
    assert copy.overflow and bytes(copy.data) == b""
    # Decoded where failcore decodes the codings; its wire size where not (or not encoded).
    assert copy.size == len(plain)


def test_only_the_dlp_decoder_salvages_what_a_corrupt_input_decoded_to() -> None:
    """A zlib error drops the failing call's output: the stream DLP scans recover it (a secret could be
    in it), the meter, which charges that input by its wire bytes, does not copy its state to do so."""
    plain = b"".join(b"data: token %d\n\n" % i for i in range(2000))
    wire = bytearray(gzip.compress(plain, mtime=0))
    wire[len(wire) // 2] ^= 0xFF  # a corrupt byte in the middle of the deflate stream
    outputs = {}
    for salvage in (True, False):
        decoder = StreamDecoder("gzip", salvage=salvage)
        got = bytearray()
        with pytest.raises(zlib.error):
            for piece in decoder.feed(bytes(wire)):
                got += piece
        outputs[salvage] = bytes(got)
    # (what follows the corrupt byte may decode to garbage before zlib notices: the start is the body's)
    assert len(outputs[True]) > 1000 and outputs[True][:1000] == plain[:1000]
    assert outputs[False] == b""
