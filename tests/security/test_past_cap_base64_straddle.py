"""Attack: a secret wrapped in base64, in a run that starts well before the recording cap and crosses
it (or crosses a 1 MiB batch seam past the cap).

The past-cap scan carried 4 KiB over from before the cap; a base64 run decodes only from its first
byte, so a run starting further back was decoded out of step: the secret was found by a scan of the
whole body and not by failcore, which recorded most of the key in clear and called its coverage
complete. Checked against the engine's own scan of the whole body (the expected value)."""

from __future__ import annotations

import base64

import pytest

from failcore.evidence.exchange import (
    EvidenceSettings,
    ExchangeSnapshot,
    MessageSnapshot,
    build_exchange_event,
)
from tests.security.evidence_helpers import AWS_KEY, SALT, origin_and_scanner

CAP = 16 * 1024
WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor " * 200


def body_with_run(shift: int, before: int = 6800) -> tuple[bytes, int]:
    plain = (WORDS[:before] + " key " + AWS_KEY + " " + WORDS[:700]).encode()
    run = base64.b64encode(plain)
    assert b"/" not in run and b"+" not in run
    start = 7288 + shift
    return b" " * start + run + b" " * 20_000, start


@pytest.mark.parametrize("shift", [0, 1, 2, 3])
def test_a_base64_run_crossing_the_cap_is_decoded_from_its_start(shift: int) -> None:
    _, scanner = origin_and_scanner()
    body, start = body_with_run(shift)
    assert "aws-access-key-id" in [h.rule_id for h in scanner.engine.scan(body)]  # the expected value
    request = MessageSnapshot("HTTP/1.1", ((b"content-type", b"text/plain"),), body, None, 1.0, 1.1)
    response = MessageSnapshot("HTTP/1.1", ((b"content-type", b"text/plain"),), b"ok", None, 1.2, 1.3)
    snap = ExchangeSnapshot(
        "f",
        "http.request",
        "api.example.test",
        443,
        "https",
        "POST",
        "/u",
        1.0,
        1.3,
        request,
        response,
        200,
        "OK",
        None,
        False,
        None,
        None,
        None,
    )
    event = build_exchange_event(snap, EvidenceSettings("r", CAP, SALT, frozenset(), dlp=scanner))
    if callable(event):
        event = event()
    hits = [h["rule"] for h in (event.get("dlp") or {}).get("hits", [])]
    assert "aws-access-key-id" in hits, (shift, hits)
    recorded = event["request"]["body"]["text"].encode()
    run = recorded[start:].split(b" ")[0].split(b"[")[0]
    decoded = base64.b64decode(run[: len(run) // 4 * 4])
    assert AWS_KEY[:8].encode() not in decoded, "the recorded part still decodes to the key's start"
