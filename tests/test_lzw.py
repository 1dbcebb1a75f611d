"""LzwStage (the `compress` coding) against the real tools: .Z files ncompress wrote (tests/data/lzw,
made by its make.py) decode to what gzip and ncompress decoded them to (sha256 in manifest.json; and
`gzip -dc` again here when installed), fed in pieces of any size; malformed streams fail as gzip's
unlzw.c fails them, after the same output."""

from __future__ import annotations

import gzip
import hashlib
import random
import shutil
import subprocess
import tracemalloc

import pytest

from failcore.evidence.body import MAX_DECODED_BYTES, DecodedBody, decode_body, decoded_steps
from failcore.evidence.lzw import LzwError, LzwStage
from failcore.evidence.pastcap import StreamDecoder
from tests.helpers import skip_or_fail
from tests.lzw_helpers import LZW_DATA, gzip_dc, lzw_compress, lzw_fixtures, lzw_pack

STEP = 256 * 1024
# Set by .ci/run, which installs ncompress: the live test must run there, not skip.
REQUIRE_NCOMPRESS = "FAILCORE_REQUIRE_NCOMPRESS"
FIXTURES = lzw_fixtures()
TEXT = b"".join(
    b"line %d of a text that repeats itself, more or less: %s\n" % (i, b"ab" * (i % 7)) for i in range(3000)
)


def _decode(wire: bytes, chunk: int, step: int = STEP) -> tuple[bytes, Exception | None]:
    stage = LzwStage(step)
    out = bytearray()
    try:
        for start in range(0, len(wire), chunk):
            for piece in stage.feed(wire[start : start + chunk]):
                assert len(piece) <= step
                out += piece
        for piece in stage.finish():
            assert len(piece) <= step
            out += piece
    except (ValueError, EOFError) as e:
        return bytes(out), e
    return bytes(out), None


class _Counting(LzwStage):
    """Notes the width of each CLEAR code read."""

    def __init__(self) -> None:
        super().__init__(STEP)
        self.clears: list[int] = []

    def _clear(self) -> None:
        self.clears.append(self.bits)
        super()._clear()


def _chunks(name: str) -> list[int]:
    size = (LZW_DATA / name).stat().st_size
    return [1, 7, 4096, size + 1] if size < 40_000 else [7, 4096, size + 1]  # (byte by byte: slow)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_a_fixture_decodes_to_what_the_real_tools_decoded_it_to(name: str) -> None:
    expected = FIXTURES[name]
    wire = (LZW_DATA / name).read_bytes()
    # (ncompress writes nothing of a stream it fails on; gzip writes what decoded before the error)
    assert (expected["gzip"]["status"] == 0) == (expected["ncompress"]["status"] == 0)
    assert expected["gzip"]["status"] or expected["gzip"]["sha256"] == expected["ncompress"]["sha256"]
    for chunk in _chunks(name):
        out, error = _decode(wire, chunk)
        assert hashlib.sha256(out).hexdigest() == expected["gzip"]["sha256"], (name, chunk)
        assert (error is not None) == (expected["gzip"]["status"] != 0), (name, chunk, error)
        assert error is None or isinstance(error, LzwError)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_gzip_here_agrees(name: str) -> None:
    wire = (LZW_DATA / name).read_bytes()
    found = gzip_dc(wire)
    if found is None:
        pytest.skip("gzip is not installed")
    out, status = found
    assert hashlib.sha256(out).hexdigest() == FIXTURES[name]["gzip"]["sha256"]
    assert (status == 0) == (FIXTURES[name]["gzip"]["status"] == 0)
    assert _decode(wire, len(wire) + 1)[0] == out


def test_the_fixtures_cover_clear_widths_and_long_strings() -> None:
    """What the fixtures are for: CLEAR at 12 and at 16 bits, every width up to 16, strings past the
    flat table entries (a run of one byte), the -b 9 table that fills, ncompress -C's stream."""
    seen: dict[str, tuple[list[int], int, int]] = {}
    for name in FIXTURES:
        stage = _Counting()
        wire = (LZW_DATA / name).read_bytes()
        try:
            for _ in stage.feed(wire):
                pass
        except LzwError:
            pass
        seen[name] = (stage.clears, stage.bits, len(stage.heads))
    assert seen["shift-12_b12.Z"][0][:1] == [12]
    assert seen["shift-16.Z"][0] == [16]
    assert seen["text.Z"][1] == 13 and seen["shift-16.Z"][1] < 16  # (9 bits again after the CLEAR)
    assert seen["runs-of-a.Z"][2] > 0
    assert {FIXTURES[n]["options"][1] for n in FIXTURES if FIXTURES[n]["options"][:1] == ["-b"]} == {
        str(b) for b in range(9, 17)
    }
    assert FIXTURES["small-text_b9.Z"]["gzip"]["status"] != 0


# (not the `shift` ones: ncompress wrote CLEAR codes in them)
ENCODED = sorted(
    n for n, f in FIXTURES.items() if f["gzip"]["status"] == 0 and not f["input"].startswith("shift")
)


@pytest.mark.parametrize("name", ENCODED)
def test_the_test_encoder_writes_what_ncompress_wrote(name: str) -> None:
    """tests/lzw_helpers.lzw_compress, used for the bodies of the proxy tests: the same bytes as
    ncompress for a stream without CLEAR (the input is the fixture decoded, pinned by its sha256)."""
    wire = (LZW_DATA / name).read_bytes()
    plain, error = _decode(wire, len(wire) + 1)
    assert error is None and hashlib.sha256(plain).hexdigest() == FIXTURES[name]["plain"]["sha256"]
    options = FIXTURES[name]["options"]
    bits = int(options[1]) if options[:1] == ["-b"] else 16
    assert lzw_compress(plain, bits) == wire


@pytest.mark.parametrize("chunk", [1, 7, 4096, 10**9])
@pytest.mark.parametrize("block_mode", [True, False])
@pytest.mark.parametrize("bits", [10, 12, 16])
def test_streams_the_test_encoder_writes_decode_as_gzip_decodes_them(
    chunk: int, block_mode: bool, bits: int
) -> None:
    """No block mode (code 256 a string, not CLEAR) too, which ncompress -C does not write right."""
    wire = lzw_compress(TEXT, bits, block_mode=block_mode)
    assert _decode(wire, chunk) == (TEXT, None)
    found = gzip_dc(wire)
    assert found is None or found == (TEXT, 0)


def test_pieces_stay_within_the_step_and_a_bomb_within_memory() -> None:
    """The KwKwK chain 97, 257, 258, ... 65535: 130 KB of codes for 2 GiB of `a` (strings of up to
    65,280 bytes). Decoded until MAX_DECODED_BYTES as the body readers stop, in pieces of at most the
    step, the table a few MiB whatever the strings' lengths."""
    wire = lzw_pack([97, *range(257, 1 << 16)])
    assert len(wire) < 140_000
    stage = LzwStage(STEP)
    total = 0
    tracemalloc.start()
    try:
        for piece in stage.feed(wire):
            assert len(piece) <= STEP and piece.count(b"a") == len(piece)
            total += len(piece)
            if total >= MAX_DECODED_BYTES:
                break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total >= MAX_DECODED_BYTES
    assert peak < 16 << 20, peak


def test_a_truncated_stream_decodes_as_far_as_gzip_does() -> None:
    """There is no end marker: a stream cut anywhere gives the whole codes before the cut."""
    wire = lzw_compress(TEXT)
    for cut in (3, 4, 5, 100, 1001, len(wire) // 2, len(wire) - 1):
        out, error = _decode(wire[:cut], 7)
        assert error is None and TEXT.startswith(out)
        found = gzip_dc(wire[:cut])
        assert found is None or found[0] == out
    assert len(_decode(wire[: len(wire) // 2], 7)[0]) > len(TEXT) // 3


@pytest.mark.parametrize("head", [b"\x1f", b"\x1f\x9d"])
def test_a_stream_cut_inside_its_header_is_truncated(head: bytes) -> None:
    out, error = _decode(head, 1)
    assert out == b"" and isinstance(error, EOFError)


@pytest.mark.parametrize(
    ("wire", "before"),
    [
        (b"\x1e\x9d" + lzw_compress(b"hello")[2:], b""),  # a bad magic
        (b"\x1f\x9d\x91" + lzw_compress(b"hello")[3:], b""),  # 17 bits
        (b"\x1f\x9d\x9f" + lzw_compress(b"hello")[3:], b""),  # 31 bits
        (lzw_pack([65, 66, 300]), b"AB"),  # a code past the table (258 entries and the KwKwK 259)
        (lzw_pack([65, 66, 260]), b"AB"),
        (lzw_pack([256, 65]), b""),  # CLEAR first: the first code must be a byte
        (lzw_pack([300]), b""),
    ],
)
def test_a_malformed_stream_fails_after_what_it_decoded(wire: bytes, before: bytes) -> None:
    for chunk in (1, len(wire)):
        out, error = _decode(wire, chunk)
        assert (out, type(error)) == (before, LzwError)
    found = gzip_dc(wire)
    assert found is None or (found[0] == before and found[1] != 0)


def test_a_kwkwk_code_and_reserved_flags() -> None:
    """The code one past the table (KwKwK) is the previous string and its first byte; flags 0x60 are
    ignored (gzip warns)."""
    kwkwk = lzw_pack([65, 66, 258, 259])
    assert _decode(kwkwk, 1) == (b"A" + b"B" * 6, None)
    assert gzip_dc(kwkwk) in (None, (b"A" + b"B" * 6, 0))
    wire = b"\x1f\x9d\xf0" + lzw_compress(TEXT)[3:]
    assert _decode(wire, 4096) == (TEXT, None)
    found = gzip_dc(wire)
    assert found is None or found[0] == TEXT


@pytest.mark.parametrize("name", ["kwkwk.Z", "small-text_b16.Z", "small-text_b10.Z"])
def test_each_whole_code_is_decoded_as_soon_as_it_is_in(name: str) -> None:
    """Fed byte by byte, what came out so far is what `gzip -dc` makes of the stream cut there (it reads
    every whole code at the end of its input): a streaming receiver, cut off, decodes no code the
    stream DLP did not see decoded."""
    wire = (LZW_DATA / name).read_bytes()
    stage = LzwStage(STEP)
    out = bytearray()
    for i in range(len(wire)):
        for piece in stage.feed(wire[i : i + 1]):
            out += piece
        if i % 5 == 4 or i == len(wire) - 1:
            found = gzip_dc(wire[: i + 1])
            if found is None:
                pytest.skip("gzip is not installed")
            assert bytes(out) == found[0], i


@pytest.mark.parametrize("coding", ["compress", "x-compress", "X-Compress"])
def test_the_body_readers_undo_the_coding(coding: str) -> None:
    wire = lzw_compress(TEXT)
    assert b"".join(decoded_steps(wire, coding)) == TEXT
    assert decode_body(wire, coding, 10**9) == DecodedBody(TEXT)
    stacked = gzip.compress(lzw_compress(gzip.compress(TEXT, mtime=0)), mtime=0)
    assert decode_body(stacked, f"gzip, {coding}, gzip", 10**9) == DecodedBody(TEXT)
    broken = decode_body(wire[:3] + b"\xff" * 40, coding, 10**9)
    assert broken.error is not None and broken.error.startswith("LzwError")


@pytest.mark.parametrize("salvage", [True, False])
def test_the_stream_decoder_undoes_it_chunk_by_chunk(salvage: bool) -> None:
    """As the stream meter (salvage=False) and strict stream DLP read an answer."""
    wire = gzip.compress(lzw_compress(TEXT), mtime=0)
    decoder = StreamDecoder("compress, gzip", salvage=salvage)
    out = b"".join(piece for i in range(0, len(wire), 1000) for piece in decoder.feed(wire[i : i + 1000]))
    assert out + b"".join(decoder.finish()) == TEXT


def test_a_full_table_of_long_strings() -> None:
    """12 bits: the KwKwK chain fills the table (entry k is k - 255 `a`s, up to 3,840: long entries),
    then codes of the full table name a long entry, a flat one, a byte."""
    codes = [97, *range(257, 4096), 4095, 300, 97]
    wire = lzw_pack(codes, 12)
    expected = b"a" * (1 + sum(k - 255 for k in range(257, 4096)) + 3840 + 45 + 1)
    for chunk in (1, 4096, len(wire)):
        assert _decode(wire, chunk) == (expected, None)
    assert gzip_dc(wire) in (None, (expected, 0))


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_clear_codes_at_9_bits_and_after_a_wider_width(chunk: int) -> None:
    """CLEAR after a few codes (its group's rest skipped, the codes after it unpacked at 9 bits), one
    at once after the width grew to 10, one after another; gzip agrees."""
    a, b = ord("a"), ord("b")
    codes = [a, b, 257, 256, b, a, 257, 258, 256, 256, a, *([b] * 300), 256, a, 257]
    wire = lzw_pack(codes)
    # a b ab | CLEAR | b a ba ab | CLEAR CLEAR | a b...b (10 bits from the 255th on) | CLEAR | a aa (KwKwK)
    expected = b"a" + b"b" + b"ab" + b"b" + b"a" + b"ba" + b"ab" + b"a" + b"b" * 300 + b"a" + b"aa"
    assert _decode(wire, chunk) == (expected, None)
    assert gzip_dc(wire) in (None, (expected, 0))


def _live_input(seed: int, size: int) -> bytes:
    """Words, then noise over 16 letters, then words again (the ratio drops: ncompress writes CLEAR)."""
    rng = random.Random(seed)
    words = [b"the", b"token", b"of", b"secret", b'{"model": "gpt-4o"}', b"\n", b"https://example.com/v1"]
    text = b" ".join(rng.choice(words) for _ in range(size // 12))
    return text + bytes(rng.choice(b"abcdefghijklmnop") for _ in range(size // 3)) + text[: size // 3]


@pytest.mark.parametrize("bits", [10, 12, 14, 16])
def test_live_ncompress_streams_decode_as_gzip_decodes_them(bits: int) -> None:
    """Fresh streams from the real tool (Debian's ncompress, installed by .ci/run), when it is here; the
    larger one of each width has a CLEAR."""
    tool = shutil.which("compress")
    if tool is None:
        skip_or_fail(
            "ncompress is not installed (apt-get install ncompress)", required_by=(REQUIRE_NCOMPRESS,)
        )
    for seed, size in ((bits, 60_000), (bits + 100, 500_000 if bits == 16 else 100_000)):
        plain = _live_input(seed, size)
        wire = subprocess.run(
            [tool, "-c", "-b", str(bits)], input=plain, capture_output=True, check=True
        ).stdout
        assert _decode(wire, 7) == _decode(wire, len(wire)) == (plain, None)
        assert gzip_dc(wire) in (None, (plain, 0))
    counting = _Counting()
    for _ in counting.feed(wire):
        pass
    assert counting.clears, "the larger stream has a CLEAR"


def _random_stream(rng: random.Random) -> bytes:
    """A header with any flags, then random bytes, or random codes (bytes, entries, KwKwK codes, CLEARs,
    now and then one past the table) packed by lzw_pack."""
    flags = (
        rng.choice([0x90, 0x10, 0x8C, 0x89, 0x88, 0x80, 0x0C, 0x00, 0xF0, 0x91])
        if rng.random() < 0.5
        else rng.randrange(256)
    )
    maxbits, block = flags & 0x1F, bool(flags & 0x80)
    if rng.random() < 0.4 or maxbits > 16:
        return b"\x1f\x9d" + bytes([flags]) + rng.randbytes(rng.randrange(3000))
    free = 257 if block else 256
    codes = [rng.randrange(256)]
    for _ in range(rng.randrange(5000)):
        roll = rng.random()
        code = (
            256
            if block and roll < 0.01
            else rng.randrange(free + 1, free + 50)
            if roll < 0.013
            else rng.randrange(free + 1)
        )
        codes.append(code)
        if block and code == 256:
            free = 256
        elif free < 1 << maxbits:
            free += 1
    return b"\x1f\x9d" + bytes([flags]) + lzw_pack(codes, maxbits, block_mode=block)[3:]


def test_random_streams_decode_as_gzip_decodes_them() -> None:
    """Differential: 150 random streams (degenerate widths, reserved flags, no block mode, garbage
    included) give what `gzip -dc` writes, and fail where it fails."""
    rng = random.Random(20261201)
    for _ in range(150):
        wire = _random_stream(rng)
        found = gzip_dc(wire)
        if found is None:
            pytest.skip("gzip is not installed")
        out, status = found
        for chunk in (13, len(wire) + 1):
            decoded, error = _decode(wire, chunk)
            assert decoded == out and (error is not None) == (status == 1), (wire[:3].hex(), len(wire), chunk)
