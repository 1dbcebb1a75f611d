"""BrotliStage against the brotli library's own one-shot and streaming decoders."""

from __future__ import annotations

import random

import brotli
import pytest

from failcore.evidence.brdecode import BrotliStage

STEP = 256 * 1024


def _text(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"AKIA", b"0123456789", b"\n"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def _decode(wire: bytes, chunk: int) -> tuple[bytes, Exception | None]:
    stage = BrotliStage(STEP)
    out = bytearray()
    try:
        for start in range(0, len(wire), chunk):
            for piece in stage.feed(wire[start : start + chunk]):
                out += piece
        for piece in stage.finish():
            out += piece
    except (brotli.error, ValueError, EOFError) as e:
        return bytes(out), e
    return bytes(out), None


@pytest.mark.parametrize("chunk", [1000, 65536, 10**9])
@pytest.mark.parametrize("size", [3000, 3 * 1024 * 1024])
def test_a_whole_stream_decodes_as_brotli_does(size: int, chunk: int) -> None:
    data = _text(size, size)
    wire = brotli.compress(data, quality=5)
    assert _decode(wire, chunk) == (brotli.decompress(wire), None)


@pytest.mark.parametrize("chunk", [1000, 65536, 10**9])
@pytest.mark.parametrize("size", [3000, 3 * 1024 * 1024])
def test_junk_after_the_end_keeps_what_a_streaming_receiver_decoded(size: int, chunk: int) -> None:
    data = _text(size, size + 1)
    wire = brotli.compress(data, quality=5) + b"\x00junk that is no brotli"
    with pytest.raises(brotli.error):
        brotli.Decompressor().process(wire)  # one call over it all: an error and nothing else
    out, error = _decode(wire, chunk)
    assert error is not None
    assert out == data, "every byte of the stream before the junk"


@pytest.mark.parametrize("chunk", [1000, 10**9])
def test_a_secret_past_many_steps_of_output_in_the_failing_piece_is_kept(chunk: int) -> None:
    # Megabytes of padding compress to a few bytes: the stream's end, the secret before it and the
    # junk after it all sit in one input piece, whose output is many output steps long.
    data = b"a" * (3 * 1024 * 1024) + b" AKIAQWERTYUIOPASDFGH end"
    wire = brotli.compress(data) + b"\x00junk"
    assert len(wire) < 1000
    out, error = _decode(wire, chunk)
    assert error is not None
    assert out == data


def test_a_corrupt_block_keeps_what_came_before_it() -> None:
    data = _text(2 * 1024 * 1024, 7)
    wire = bytearray(brotli.compress(data, quality=5))
    cut = len(wire) * 3 // 4
    wire[cut : cut + 64] = b"\xff" * 64
    # What a byte-by-byte streaming receiver has before the error: the reference.
    reference = bytearray()
    receiver = brotli.Decompressor()
    try:
        for i in range(len(wire)):
            reference += receiver.process(bytes(wire[i : i + 1]))
    except brotli.error:
        pass
    out, error = _decode(bytes(wire), 65536)
    assert error is not None
    assert len(reference) > len(data) // 2
    assert out == bytes(reference)
