"""The text-run search of the past-cap scan (failcore.dlp.stream.text_windows): whichever way it finds the
runs (one Hyperscan pass over the bytes in place, as the scan process does, or the translated copy, as
the proxy's own scan thread does), its windows are exactly those a plain `re` over the same byte class
gives, on random and adversarial buffers, on bytes and on views of shared memory. A run it missed would
be bytes past the recorded cap never scanned.
"""

from __future__ import annotations

import mmap
import os
import random
import re

import pytest

import failcore.dlp.stream as stream
from failcore.dlp import DlpEngine, builtin_rules
from failcore.dlp import regex_backend as rx
from failcore.dlp.stream import (
    ISLAND_GAP,
    MAX_WINDOW_SHARE,
    MAX_WINDOWS,
    MIN_ISLAND,
    SAMPLE_STRIDE,
    scan_bulk,
    text_windows,
)
from failcore.evidence.pastcap import PastCapScan

# The byte class written out again, independently of the module: printable ASCII, tab, LF, CR.
TEXT = frozenset(b"\t\n\r" + bytes(range(0x20, 0x7F)))
RUN = re.compile(rb"[\t\n\r\x20-\x7e]{%d,}" % MIN_ISLAND)
GITHUB = b"ghp_" + b"Z9y8X7w6V5u4" * 3
AWS = b"AKIA" + b"QX2Z7Y3W4V5U6T7S"


def expected_windows(buffer: bytes) -> list[tuple[int, int]] | None:
    """What text_windows promises, from `re`: None when every sampled byte (or every byte) is text, or
    when the windows are more than MAX_WINDOWS or cover more than MAX_WINDOW_SHARE of the buffer."""
    if all(byte in TEXT for byte in buffer[::SAMPLE_STRIDE]) or all(byte in TEXT for byte in buffer):
        return None
    windows: list[list[int]] = []
    for match in RUN.finditer(buffer):
        start, stop = max(0, match.start() - 1), min(len(buffer), match.end() + 1)
        if windows and start - windows[-1][1] < ISLAND_GAP:
            windows[-1][1] = stop
        else:
            windows.append([start, stop])
    if len(windows) > MAX_WINDOWS or sum(b - a for a, b in windows) > MAX_WINDOW_SHARE * len(buffer):
        return None
    return [(a, b) for a, b in windows]


def adversarial(rng: random.Random) -> bytes:
    """Runs of text around every bound (MIN_ISLAND, ISLAND_GAP, MAX_WINDOWS, the share), cut by the
    bytes just outside the class, at the buffer's ends."""
    edges_out = [0x00, 0x08, 0x0B, 0x0C, 0x0E, 0x1F, 0x7F, 0x80, 0xFF]
    edges_in = [0x09, 0x0A, 0x0D, 0x20, 0x7E, 0x61]
    pieces: list[bytes] = []
    if rng.random() < 0.5:
        pieces.append(bytes(rng.choice(edges_in) for _ in range(rng.choice([9, 10, 11, 70]))))
    for _ in range(rng.choice([1, 5, MAX_WINDOWS - 1, MAX_WINDOWS, MAX_WINDOWS + 1, 400])):
        pieces.append(bytes(rng.choice(edges_out) for _ in range(rng.choice([1, 2, 61, 62, 63, 64, 65, 66]))))
        pieces.append(bytes(rng.choice(edges_in) for _ in range(rng.choice([8, 9, 10, 11, 12, 40]))))
    if rng.random() < 0.5:
        pieces.append(bytes(rng.choice(edges_out) for _ in range(rng.choice([1, 3, 200]))))
    return b"".join(pieces)


def buffers() -> list[bytes]:
    rng = random.Random(1234)
    cases = [
        b"",
        b"a",
        b"\x00",
        b"abcdefghi\x00",
        b"\x00abcdefghi",
        b"\x00abcdefghij",
        b"abcdefghij\x00",
        b"\x80" * 61 + b"abcdefghij",  # a run ending at the buffer's end
        b"\x80abcdefghij" + b"\x80" * 200,
        b"\x80" * 200 + b"abcdefghij" + b"\x80" + b"abcdefghij" + b"\x80" * 200,
        (b"abcdefghij" + b"\x81" * 70) * 300,
        (b"abcdefghij" + b"\x81" * 30) * 3000,
        bytes(range(256)) * 40,
        # the sample (every SAMPLE_STRIDE-th byte) is looked at from its head first: text in the head only,
        # binary bytes only between sampled ones, one sampled binary byte far past the head
        b"a" * 5000 + rng.randbytes(20_000),
        between_samples(b"lorem ipsum " * 2000, set()),
        between_samples(b"lorem ipsum " * 2000, {SAMPLE_STRIDE * 100}),
        between_samples(b"lorem ipsum " * 2000, {SAMPLE_STRIDE * 350}),
        rng.randbytes((1 << 20) + stream_overlap()),  # one real batch of random bytes
    ]
    for _ in range(60):
        cases.append(adversarial(rng))
    for _ in range(40):
        alphabet = rng.choice([bytes(range(256)), b"ab\x00", b"abcdefghij\x00\x01", b"a" * 40 + b"\xff"])
        cases.append(bytes(rng.choice(alphabet) for _ in range(rng.choice([30, 700, 20_000]))))
    for _ in range(6):  # binary with planted runs of every length around MIN_ISLAND
        body = bytearray(rng.randbytes(200_000))
        for _ in range(100):
            at = rng.randrange(len(body) - 40)
            body[at : at + rng.choice([9, 10, 11, 30])] = b"x" * 40
        cases.append(bytes(body))
    return cases


def between_samples(text: bytes, sampled: set[int]) -> bytes:
    """`text` with a binary byte at every 7th position that is not a sampled one, and at `sampled`."""
    out = bytearray(text)
    for i in range(3, len(out), 7):
        if i % SAMPLE_STRIDE:
            out[i] = 0x80
    for i in sampled:
        out[i] = 0x00
    return bytes(out)


def stream_overlap() -> int:
    from failcore.evidence.pastcapworker import OVERLAP

    return OVERLAP


@pytest.fixture(scope="module")
def cases() -> list[bytes]:
    return buffers()


def test_the_windows_are_those_of_a_plain_re_over_the_same_bytes(cases, monkeypatch) -> None:
    translated: list[int] = []
    real = stream._windows_by_translation
    monkeypatch.setattr(
        stream, "_windows_by_translation", lambda buffer: translated.append(len(buffer)) or real(buffer)
    )
    decided = 0
    for buffer in cases:
        expected = expected_windows(buffer)
        assert text_windows(buffer, hyperscan=True) == expected, buffer[:80]
        decided += expected is not None
    assert decided > 60  # most cases have windows (not all scanned whole): the comparison means something
    if rx.hyperscan_available():  # ... and they came from the Hyperscan pass, not the fallback
        assert all(size < MIN_ISLAND for size in translated), translated


def test_the_translated_copy_gives_the_same_windows(cases, monkeypatch) -> None:
    """The proxy's own scan thread (and a host without Hyperscan) never uses the Hyperscan pass."""
    monkeypatch.setattr(stream, "_run_database", lambda min_island: pytest.fail("Hyperscan pass used"))
    for buffer in cases:
        assert text_windows(buffer) == expected_windows(buffer), buffer[:80]
    monkeypatch.setattr(stream, "_run_database", lambda min_island: None)  # no Hyperscan installed
    for buffer in cases:
        assert text_windows(buffer, hyperscan=True) == expected_windows(buffer), buffer[:80]


def test_runs_reported_out_of_order_are_not_trusted(monkeypatch) -> None:
    """Should a Hyperscan build report runs out of order, the windows come from the translated copy."""

    class Backwards:
        def scan(self, buffer, match_event_handler, scratch):  # type: ignore[no-untyped-def]
            for start, end in reversed([m.span() for m in RUN.finditer(bytes(buffer))]):
                if match_event_handler(0, start, end + 1, 0, None):
                    break

    monkeypatch.setattr(stream, "_run_database", lambda min_island: Backwards())
    monkeypatch.setattr(stream, "_scratch_for", lambda database: None)
    buffer = b"\x80" * 100 + b"abcdefghijk" + b"\x80" * 100 + b"abcdefghijklm" + b"\x80" * 100
    assert text_windows(buffer, hyperscan=True) == expected_windows(buffer) == [(99, 112), (210, 225)]


def test_a_view_of_shared_memory_gives_the_windows_of_its_bytes(cases) -> None:
    """The scan process hands text_windows a slice of its mmap: offsets are into the slice."""
    for buffer in cases[:40]:
        size = len(buffer) + 100
        fd = os.memfd_create("failcore-test")
        try:
            os.ftruncate(fd, size)
            with mmap.mmap(fd, size) as memory:
                memory[37 : 37 + len(buffer)] = buffer
                view = memoryview(memory)
                with view[37 : 37 + len(buffer)] as piece:
                    for hyperscan in (True, False):
                        assert text_windows(piece, hyperscan=hyperscan) == expected_windows(buffer)
                view.release()
        finally:
            os.close(fd)


@pytest.fixture(scope="module")
def engine() -> DlpEngine:
    return DlpEngine(builtin_rules(), salt=b"test-salt")


def test_scan_bulk_of_a_view_finds_what_it_finds_in_the_bytes(engine) -> None:
    """Secrets in text runs inside binary bytes (raw, in JSON, base64-encoded, two a few binary bytes
    apart, one at each end), and a text batch: scanned from a memoryview (as the scan process does,
    in place) and from bytes, the same hits; and for the binary batch what a scan of every byte finds."""
    rng = random.Random(7)
    binary = b"".join(
        [
            GITHUB + b"\x00",
            rng.randbytes(300_000),
            b'\x00{"key": "' + AWS + b'"}\x00',
            rng.randbytes(200_000),
            b"\xff" + __import__("base64").b64encode(b"token=" + GITHUB + b" ") + b"\xfe",
            rng.randbytes(100_000),
            b"\x7f" + AWS + b"\x80\x81" + GITHUB + b"\x90",
            rng.randbytes(50_000),
            b"\x00" + GITHUB,
        ]
    )
    text = b"lorem ipsum " * 20_000 + GITHUB + b" " + AWS

    def spans(hits):  # type: ignore[no-untyped-def]
        return sorted((h.rule_id, h.start, h.end, h.preview, h.fingerprint) for h in hits)

    for body in (binary, text):
        expected = spans(scan_bulk(engine, body))
        assert spans(scan_bulk(engine, body, hyperscan=True)) == expected
        with memoryview(bytearray(b"\x00" * 11 + body)) as whole, whole[11:] as view:
            assert spans(scan_bulk(engine, view, hyperscan=True)) == expected
    assert text_windows(binary) is not None
    assert {(r, a, b) for r, a, b, _, _ in spans(scan_bulk(engine, binary))} == {
        (h.rule_id, h.start, h.end) for h in engine.scan(binary)
    }
    assert len(spans(scan_bulk(engine, binary))) >= 5


def test_the_proxys_own_scan_thread_finds_runs_without_hyperscan_callbacks(engine, monkeypatch) -> None:
    """In the proxy a callback per run would wait for the GIL each time (commit f43551b): its scan
    thread (no scan process here: no policy file) keeps the translated copy, and still finds the secret."""
    monkeypatch.setattr(stream, "_run_database", lambda min_island: pytest.fail("Hyperscan pass used"))
    rng = random.Random(9)
    head = rng.randbytes(1_500_000) + b"\x00AWS_KEY="
    body = head + AWS + b"\x00" + rng.randbytes(300_000)
    scan = PastCapScan(engine, 65_536, "request.body")
    for i in range(0, len(body), 32_768):
        scan(body[i : i + 32_768])
    hits, coverage = scan.results(timeout=30)
    assert coverage["complete"] is True, coverage
    assert [(offset, hit.rule_id) for offset, hit in hits] == [(len(head), "aws-access-key-id")]
