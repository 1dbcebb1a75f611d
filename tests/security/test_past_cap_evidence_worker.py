"""An exchange whose body streamed past the recorded cap now has its DLP evidence pass (the recorded
part's scan, the past-cap hits placed in the event) run by the DLP evidence worker, with the past-cap
results sent as plain data. Attacks: a secret in the recorded part, one straddling the cap and one past
it, hoping the worker masks less than the proxy did; kill the worker holding the batch and hope the
event reaches the tape unmasked or goes unrecorded.
"""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from failcore.evidence.body import body_evidence
from failcore.evidence.dlp import scan_event
from failcore.evidence.pastcap import PastCapScan
from tests.helpers import github_token
from tests.security.test_evidence_worker import _event, _origin_and_scanner

CAP = 16 * 1024  # small: the event's frame fits a pipe's buffer, so a stopped child cannot block it
SIZE = 300 * 1024


def _secrets() -> dict[str, tuple[int, str]]:
    """Where each secret starts: in the recorded part, straddling the cap, past it."""
    return {
        "recorded": (5_000, github_token()),
        "straddling": (CAP - 10, github_token()),
        "past": (200_000, github_token()),
    }


def _body(placed: dict[str, tuple[int, str]]) -> bytes:
    body = bytearray(hashlib.shake_256(b"past-cap evidence").digest(SIZE))
    for at, secret in placed.values():
        body[at - 1 : at + len(secret) + 1] = b" " + secret.encode() + b" "
    return bytes(body)


def _upload_event(body: bytes, scanner) -> tuple[dict[str, object], PastCapScan]:  # type: ignore[no-untyped-def]
    """The event of a binary upload of `body` as the proxy builds it before its DLP pass, and the
    past-cap scan of the body's stream (run by the in-process worker thread)."""
    event = _event("upload")
    event["path"] = "/upload"
    event["request"]["headers"] = [["content-type", "application/octet-stream"]]  # type: ignore[index]
    event["request"]["body"] = body_evidence(  # type: ignore[index]
        body[:CAP],
        complete=False,
        wire_size=len(body),
        content_encoding=None,
        content_type="application/octet-stream",
        cap=CAP,
    )
    scan = PastCapScan(scanner.engine, CAP, "request.body")
    for i in range(0, len(body), 7_000):
        scan(body[i : i + 7_000])
    return event, scan


def _assert_masked(event: dict[str, object], placed: dict[str, tuple[int, str]]) -> None:
    raw = orjson.dumps(event)
    recorded = base64.b64decode(event["request"]["body"]["b64"])  # type: ignore[index]
    for at, secret in placed.values():
        assert secret.encode() not in raw
        assert secret.encode()[:10] not in recorded  # the straddling one's start is masked too
        assert at < CAP or f"request.body@{at}" in {h["location"] for h in event["dlp"]["hits"]}  # type: ignore[index]
    assert event["dlp"]["past_cap"] == [  # type: ignore[index]
        {"where": "request.body", "from_byte": CAP, "to_byte": SIZE, "complete": True, "note": None}
    ]


@pytest.mark.parametrize("kind", ["binary", "text"])
def test_a_secret_straddling_the_cap_is_masked_in_the_recorded_part_after_a_secret_before_it(
    kind: str,
) -> None:
    """The recorded part's own secret is masked first, which shortens it (a mask is shorter than the
    secret): the straddling secret's start, located by its offset, was then left in clear."""
    _, scanner = _origin_and_scanner()
    placed = _secrets()
    body = _body(placed)
    if kind == "text":
        body = bytes(b if 0x20 <= b < 0x7F and b != 0x22 and b != 0x5C else 0x61 for b in body)
    event, scan = _upload_event(body, scanner)
    if kind == "text":
        event["request"]["body"] = body_evidence(  # type: ignore[index]
            body[:CAP],
            complete=False,
            wire_size=len(body),
            content_encoding=None,
            content_type="text/plain",
            cap=CAP,
        )
    scan_event(scanner, event, [scan])
    recorded = event["request"]["body"]  # type: ignore[index]
    recorded = base64.b64decode(recorded["b64"]) if kind == "binary" else recorded["text"].encode()
    for _, secret in placed.values():
        assert secret.encode() not in orjson.dumps(event)
        assert secret.encode()[:8] not in recorded
    assert event["request"]["body"]["dlp_masked"] == 2  # type: ignore[index]
