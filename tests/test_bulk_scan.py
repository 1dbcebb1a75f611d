"""DLP past the recorded cap of a bulk body: a binary body is scanned where it holds text, with the same
findings as a scan of the whole body, wherever the chunks are cut."""

from __future__ import annotations

import base64
import random

import pytest

import failcore.evidence.pastcap as pastcap
from failcore.dlp import DlpEngine, builtin_rules
from failcore.dlp.stream import MIN_ISLAND, scan_bulk, text_windows
from failcore.evidence.pastcap import OVERLAP, PastCapScan
from tests.helpers import network_events, proxied_client, read_tape

CAP = 10_000
GITHUB = b"ghp_" + b"Z9y8X7w6V5u4" * 3
AWS = b"AKIA" + b"QX2Z7Y3W4V5U6T7S"  # 20 characters, the documented key-id shape
NPM = b"npm_" + b"Qw3Er5Ty7Ui9Op1As3Df5Gh7Jk9Lz2Xc4Vb6"


@pytest.fixture(scope="module")
def engine() -> DlpEngine:
    return DlpEngine(builtin_rules(), salt=b"test-salt")


def binary(size: int, seed: int) -> bytes:
    """Incompressible bytes, like a model file or an archive (seeded: the same every run)."""
    return random.Random(seed).randbytes(size)


def spans(hits) -> list[tuple[str, int, int]]:  # type: ignore[no-untyped-def]
    return sorted((hit.rule_id, hit.start, hit.end) for hit in hits)


def found(scan: PastCapScan) -> list[tuple[int, str]]:
    hits, coverage = scan.results(timeout=30)
    assert coverage["complete"] is True, coverage
    return [(offset, hit.rule_id) for offset, hit in hits]


def planted_body() -> tuple[bytes, list[tuple[int, str]]]:
    """Binary bytes with secrets in several forms, each next to binary bytes: raw, inside a JSON
    document, base64-encoded, percent-encoded, and two secrets a few binary bytes apart."""
    pieces: list[bytes] = []
    planted: list[tuple[int, str]] = []

    def add(data: bytes, secret_at: int | None = None, rule: str = "") -> None:
        if secret_at is not None:
            planted.append((sum(map(len, pieces)) + secret_at, rule))
        pieces.append(data)

    add(binary(40_000, 1))
    add(b"\x00" + GITHUB + b"\x00", 1, "github-pat")
    add(binary(70_000, 2))
    json_doc = b'{"config": {"key": "' + AWS + b'", "region": "eu-west-1"}}'
    add(json_doc, json_doc.index(AWS), "aws-access-key-id")
    add(binary(50_000, 3))
    add(b"\xff" + base64.b64encode(b"token=" + GITHUB + b" ") + b"\xfe")
    add(binary(30_000, 4))
    percent = b"t=ghp%5F" + GITHUB[4:] + b"&"  # found in the percent-decoded view only
    add(b"\x01" + percent + b"\x02", 3, "github-pat")
    add(binary(60_000, 5))
    add(b"\x7f" + NPM + b"\x80\x81" + GITHUB + b"\x90", 1, "npm-access-token")
    planted.append((sum(map(len, pieces)) - len(GITHUB) - 1, "github-pat"))
    add(binary(20_000, 6))
    return b"".join(pieces), planted


def test_a_binary_buffer_is_scanned_only_where_it_holds_text(engine) -> None:
    body, _ = planted_body()
    windows = text_windows(body)
    assert windows is not None
    assert sum(stop - start for start, stop in windows) < len(body) // 50
    # ... and what those windows find is what scanning every byte finds.
    assert spans(scan_bulk(engine, body)) == spans(engine.scan(body))


def test_text_is_scanned_whole(engine) -> None:
    text = b'{"a": "' + b"lorem ipsum " * 5000 + GITHUB + b'"}'
    assert text_windows(text) is None
    assert spans(scan_bulk(engine, text)) == spans(engine.scan(text))


def test_every_planted_secret_is_found_past_the_cap_once(engine) -> None:
    body, planted = planted_body()
    direct = {(start, hit.rule_id) for hit in engine.scan(body) for start in [hit.start] if start >= CAP}
    scan = PastCapScan(engine, CAP, "response.body")
    for i in range(0, len(body), 65_536):
        scan(body[i : i + 65_536])
    hits = found(scan)
    assert set(planted) <= set(hits)
    assert set(hits) == direct
    assert len(hits) == len(set(hits))


@pytest.mark.parametrize("context", ["binary", "text"])
def test_a_secret_split_across_two_chunks_at_every_offset_is_found_once(engine, context) -> None:
    filler = binary if context == "binary" else (lambda size, seed: b"lorem ipsum " * (size // 12))
    head = filler(300_000, 11) + b"\x00 " + b"key "
    tail = b" \x00" + filler(100_000, 12)
    body = head + GITHUB + tail
    at = len(head)
    for cut in range(at - 2, at + len(GITHUB) + 3):
        scan = PastCapScan(engine, CAP, "request.body")
        scan(body[:cut])
        scan(body[cut:])
        assert found(scan) == [(at, "github-pat")], cut


def test_a_secret_split_across_the_batch_boundary_is_found(engine) -> None:
    # The worker gets the body in batches of BATCH_BYTES (plus OVERLAP bytes kept before each): put
    # the secret across the first batch's end, with binary bytes on both sides.
    start = CAP + pastcap.BATCH_BYTES - len(GITHUB) // 2
    body = binary(start - 1, 21) + b"\x00" + GITHUB + b"\x00" + binary(400_000, 22)
    scan = PastCapScan(engine, CAP, "request.body")
    for i in range(0, len(body), 16_384):
        scan(body[i : i + 16_384])
    assert found(scan) == [(start, "github-pat")]


def test_thousands_of_tiny_chunks_find_the_same_and_keep_no_chunks(engine, monkeypatch) -> None:
    monkeypatch.setattr(pastcap, "BATCH_BYTES", 32_768)  # many batches, each of thousands of chunks
    body, planted = planted_body()
    body = body[:140_000]  # the first three planted secrets
    expected = sorted((start, rule) for start, rule in planted if start < 140_000)
    scan = PastCapScan(engine, CAP, "response.body")
    largest_batch = largest_tail = 0
    sizes = [1, 2, 3, 5, 7, 11, 13]
    i = 0
    chunks = 0
    while i < len(body):
        size = sizes[chunks % len(sizes)]
        scan(body[i : i + size])
        i += size
        chunks += 1
        largest_batch = max(largest_batch, len(scan.batch))
        largest_tail = max(largest_tail, len(scan.tail))
    assert chunks > 10_000
    assert found(scan) == expected
    # What the scan holds between chunks is one batch being filled and the overlap before it.
    assert largest_batch <= 32_768
    assert largest_tail <= OVERLAP


def test_a_binary_body_past_the_cap_costs_a_small_share_of_its_bytes_in_rule_scans(
    engine, monkeypatch
) -> None:
    scanned: list[int] = []
    real_scan = engine.scan
    monkeypatch.setattr(engine, "scan", lambda data: scanned.append(len(data)) or real_scan(data))
    body = binary(4 << 20, 31)
    scan = PastCapScan(engine, CAP, "response.body")
    for i in range(0, len(body), 65_536):
        scan(body[i : i + 65_536])
    assert found(scan) == []
    assert 0 < sum(scanned) < len(body) // 100


def test_short_text_runs_in_binary_are_not_windows() -> None:
    run = b"x" * (MIN_ISLAND - 1)
    assert text_windows(b"\x00" + run + b"\x00" * 100) == []
    assert text_windows(b"\x00" * 100 + run + b"y" + b"\x00") == [(99, 100 + MIN_ISLAND + 1)]


def test_a_binary_upload_through_the_proxy_has_its_secret_past_the_cap_found_by_offset(
    start_proxy, upstream, tmp_path
) -> None:
    """Through the real proxy: a streamed binary upload carries a secret in a text run far past the
    recorded cap; the tape locates it by byte offset, says the scan was whole, and never holds the
    secret."""

    proxy = start_proxy(sets=["failcore_body_cap=65536", "failcore_stream_threshold=65536"])
    head = binary(1_500_000, 41) + b"\x00AWS_KEY="
    body = head + AWS + b"\x00" + binary(500_000, 42)

    def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(body), 32_768):
            yield body[i : i + 32_768]

    with proxied_client(proxy) as client:
        echoed = client.post(upstream.url + "/echo", content=chunks())
    assert echoed.status_code == 200  # traffic untouched: the stand-in echoes what it received
    assert base64.b64decode(echoed.json()["body_base64"]) == body
    proxy.stop()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "tape").glob("seg-*.jsonl"))
    assert AWS not in raw
    [event] = [e for e in network_events(read_tape(tmp_path / "tape")) if e["summary"] == "POST /echo"]
    locations = {h["location"] for h in event["dlp"]["hits"] if h["rule"] == "aws-access-key-id"}
    # The echo carries the body base64-encoded past its own cap: every base64 run is decoded (dlpdecode),
    # so the key is found there too, located where the base64 of its bytes starts.
    assert len(head) % 3 == 0
    in_echo = echoed.content.index(base64.b64encode(body[:3000])) + len(head) // 3 * 4
    assert locations == {f"request.body@{len(head)}", f"response.body@{in_echo}"}
    coverage = {c["where"]: c for c in event["dlp"]["past_cap"]}
    assert coverage["request.body"] == {
        "where": "request.body",
        "from_byte": 65536,
        "to_byte": len(body),
        "complete": True,
        "note": None,
    }
    assert coverage["response.body"]["complete"] is True


def text_runs(buffer: bytes) -> list[tuple[int, int]]:
    """The runs of at least MIN_ISLAND text bytes, found byte by byte (the reference)."""
    text = set(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}
    runs: list[tuple[int, int]] = []
    start = None
    for i, byte in enumerate([*buffer, None]):
        if byte is not None and byte in text:
            start = i if start is None else start
            continue
        if start is not None and i - start >= MIN_ISLAND:
            runs.append((start, i))
        start = None
    return runs


def edge_cases() -> list[bytes]:
    text = b"abcdefghij"  # MIN_ISLAND long
    return [
        text + b"\x00" * 200,  # a run at the very start
        b"\x00" * 200 + text,  # ... at the very end
        b"\x80" * 100 + text[:-1] + b"\x80" * 100,  # one byte too short
        b"\x80" * 100 + text + b"\x80" + text + b"\x80" * 100,  # two runs one byte apart
        (text + b"\x81" * 70) * 300,  # many runs just too far apart to merge
        (text + b"\x81" * 30) * 3000,  # runs that merge, covering too much: scanned whole
        bytes(range(256)) * 40,
    ]


@pytest.mark.parametrize("seed", range(12))
def test_text_runs_are_found_exactly_wherever_they_are(seed) -> None:
    """text_windows finds every run of text the reference finds, each inside one window with its byte
    of context, and nothing else."""
    rng = random.Random(seed)
    cases = edge_cases() if seed == 0 else []
    for _ in range(20):
        alphabet = rng.choice([bytes(range(256)), b"ab\x00", b"abcdefghij\x00\x01", b"a" * 40 + b"\xff"])
        cases.append(bytes(rng.choice(alphabet) for _ in range(rng.choice([30, 700, 20_000]))))
    for buffer in cases:
        windows = text_windows(buffer)
        if windows is None:  # a sample of it is all text, or its runs cover too much: scanned whole
            continue
        runs = text_runs(buffer)
        for start, stop in runs:
            assert any(a <= max(0, start - 1) and min(len(buffer), stop + 1) <= b for a, b in windows)
        for a, b in windows:  # every window is made of runs (merged across short gaps)
            assert any(a <= start and stop <= b for start, stop in runs)
            assert (a == 0 or any(start - 1 == a for start, _ in runs)) and (
                b == len(buffer) or any(stop + 1 == b for _, stop in runs)
            )
