"""PastCapScan: DLP over the part of a streamed body the tape does not keep."""

from __future__ import annotations

import threading

import pytest

import failcore.evidence.pastcap as pastcap
from failcore.dlp import DlpEngine, builtin_rules
from failcore.evidence.pastcap import OVERLAP, PastCapScan, scan_held_body

SECRET = b"ghp_" + b"Z9y8X7w6V5u4" * 3
CAP = 10_000


@pytest.fixture(scope="module")
def engine() -> DlpEngine:
    return DlpEngine(builtin_rules(), salt=b"test-salt")


def feed(scan: PastCapScan, body: bytes, size: int) -> None:
    for i in range(0, len(body), size):
        scan(body[i : i + size])


def found(scan: PastCapScan) -> tuple[list[tuple[int, str]], dict]:
    hits, coverage = scan.results(timeout=10)
    return [(offset, hit.rule_id) for offset, hit in hits], coverage


@pytest.mark.parametrize("chunk", [1, 7, 1000, 4096, 50_000])
def test_a_secret_straddling_the_cap_or_a_chunk_boundary_is_found_once(engine, chunk) -> None:
    at = CAP - 10  # starts inside the recorded part, ends past it: the evidence scan cannot see it whole
    body = b"a " * (at // 2) + SECRET + b" " + b"b " * 30_000
    scan = PastCapScan(engine, CAP, "request.body")
    feed(scan, body, chunk)
    hits, coverage = found(scan)
    assert hits == [(at, "github-pat")]
    assert coverage == {
        "where": "request.body",
        "from_byte": CAP,
        "to_byte": len(body),
        "complete": True,
        "note": None,
    }


def test_hits_wholly_inside_the_recorded_part_are_left_to_the_evidence_scan(engine) -> None:
    body = b"k " + SECRET + b" " + b"c" * 50_000
    scan = PastCapScan(engine, CAP, "response.body")
    feed(scan, body, 3000)
    assert found(scan)[0] == []


def test_several_secrets_far_past_the_cap_each_get_their_offset(engine) -> None:
    pieces = [b"x" * 30_000, b" ", SECRET, b" ", b"y" * 600_000, b" ", SECRET, b" end"]
    body = b"".join(pieces)
    scan = PastCapScan(engine, CAP, "request.body")
    feed(scan, body, 8192)
    first = 30_001
    second = first + len(SECRET) + 1 + 600_000 + 1
    assert found(scan)[0] == [(first, "github-pat"), (second, "github-pat")]


def test_a_body_that_never_passes_the_cap_costs_no_scan(engine, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(engine, "scan", lambda data: calls.append(data) or [])
    scan = PastCapScan(engine, CAP, "request.body")
    feed(scan, b"z" * (CAP - OVERLAP), 100)
    assert not scan.passed_cap and calls == []


def test_a_compressed_stream_says_the_part_past_the_cap_was_not_scanned(engine) -> None:
    scan = PastCapScan(engine, CAP, "response.body", compressed=True)
    feed(scan, b"\x1f\x8b" + b"q" * 30_000, 4096)
    hits, coverage = found(scan)
    assert hits == [] and coverage["complete"] is False
    assert "compressed" in coverage["note"]


def test_a_full_scan_queue_stops_that_scan_and_says_where(engine, monkeypatch) -> None:
    gate = threading.Event()

    class StuckWorker:
        def __init__(self) -> None:
            self.accepted = 0

        def submit(self, scan, buffer, base):  # type: ignore[no-untyped-def]
            if self.accepted >= 2:
                return False
            self.accepted += 1
            threading.Thread(target=lambda: (gate.wait(5), scan.scan_now(buffer, base))).start()
            return True

    stuck = StuckWorker()
    monkeypatch.setattr(pastcap, "_worker", lambda: stuck)
    scan = PastCapScan(engine, CAP, "request.body")
    feed(scan, b"w" * (CAP + 5 * pastcap.BATCH_BYTES), 4096)
    gate.set()
    _, coverage = found(scan)
    assert coverage["complete"] is False
    assert stuck.accepted == 2
    assert coverage["note"].startswith("scan queue full: stopped scanning at byte ")


@pytest.mark.parametrize("encoding", [None, "gzip", "br", "zstd"])
def test_a_body_held_whole_is_scanned_past_the_cap_decoded(engine, encoding) -> None:
    import gzip

    import brotli

    from failcore.compat import zstd

    body = b"a " * 20_000 + SECRET + b" tail"
    wire = {
        None: lambda b: b,
        "gzip": gzip.compress,
        "br": brotli.compress,
        "zstd": lambda b: zstd.compress(b),
    }[encoding](body)
    scan = scan_held_body(engine, CAP, "response.body", wire, encoding)
    assert scan is not None
    hits, coverage = scan.results(timeout=5)
    assert [(offset, hit.rule_id) for offset, hit in hits] == [(40_000, "github-pat")]
    assert coverage == {
        "where": "response.body",
        "from_byte": CAP,
        "to_byte": len(body),
        "complete": True,
        "note": None,
    }


def test_a_held_body_within_the_cap_needs_no_past_cap_scan(engine) -> None:
    import gzip

    assert scan_held_body(engine, CAP, "request.body", b"x" * CAP, None) is None
    assert scan_held_body(engine, CAP, "request.body", gzip.compress(b"x" * CAP), "gzip") is None
