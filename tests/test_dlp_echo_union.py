"""The exchange's own credentials echoed inside a secret the DLP pass masks (failcore.evidence.echoes):
the event is scanned as sent, and the echoes and the hits are masked together, in the path, a header
value and a (response) body; a hit that is only the echoed credential stays an echo, not a DLP hit; the
DLP evidence worker's frame carries the echoes (the same pass in the child)."""

from __future__ import annotations

import base64
import os

import orjson

from failcore.dlp.engine import DlpEngine
from failcore.dlp.rules import builtin_rules
from failcore.dlp.scanner import DlpScanner
from failcore.evidence.dlp import scan_event
from failcore.evidence.echoes import echo_spans, mask_with_echoes
from failcore.evidence.redact import credential_values
from failcore.evidence.scanchild import _frame_item
from failcore.evidence.scanworker import DeferredScan
from failcore.policy.model import DlpSettings

SALT = b"echo-union"
KEYBODY = base64.b64encode(os.urandom(900)).decode()
LINES = [KEYBODY[i : i + 64] for i in range(0, len(KEYBODY), 64)]
KEY = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(LINES) + "\n-----END RSA PRIVATE KEY-----"
GITHUB = "ghp_" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7c"


def _scanner() -> DlpScanner:
    return DlpScanner(DlpEngine(tuple(builtin_rules()), backend="re2", salt=SALT), DlpSettings(), True)


def _event() -> dict[str, object]:
    return {
        "kind": "network",
        "target": {"host": "api.example.test", "port": 443, "scheme": "https"},
        "method": "POST",
        "path": "/v1/x?k=" + KEY.replace("\n", "%0A"),
        "summary": "POST /v1/x",
        "request": {
            "headers": [["X-Key", KEY.replace("\n", " ")]],
            "body": {"text": orjson.dumps({"k": KEY}).decode()},
        },
        "response": {"headers": [], "body": {"text": "echo " + KEY + " and " + GITHUB}},
    }


def test_a_secret_holding_an_echo_is_masked_whole_everywhere() -> None:
    secrets = credential_values([(b"cookie", f"s={KEYBODY[:40]}; t={GITHUB}".encode())])
    event = _event()
    scan_event(_scanner(), event, (), (secrets, SALT))
    text = orjson.dumps(event)
    assert [line for line in LINES if line[:20].encode() in text] == []
    assert KEYBODY[:40].encode() not in text and GITHUB.encode() not in text
    rules = [(h["rule"], h["location"].split(":")[0]) for h in event["dlp"]["hits"]]  # type: ignore[index]
    assert ("private-key", "response.body") in rules and ("private-key", "request.body") in rules
    assert ("private-key", "request.header") in rules
    assert "github-pat" not in [rule for rule, _ in rules], "the echoed token is the exchange's credential"


def test_overlapping_spans_are_one_mask_of_fingerprints() -> None:
    data = b"aaa SECRETKEYVALUE bbb"
    spans = echo_spans(data, [b"KEYVAL"], SALT)
    assert [(s, e) for s, e, _ in spans] == [(10, 16)]
    assert mask_with_echoes(data, [], spans) == b"aaa SECRET[redacted " + spans[0][2].encode() + b"]UE bbb"


def test_the_worker_frame_carries_the_echoes() -> None:
    secrets = credential_values([(b"cookie", f"s={KEYBODY[:40]}".encode())])
    scanner = _scanner()
    deferred = DeferredScan(_event(), scanner, None, (), (secrets, SALT))
    event, past_cap, echoes = _frame_item(orjson.loads(orjson.dumps(deferred.frame_item())))
    assert echoes == (secrets, SALT) and past_cap == ()
    scan_event(scanner, event, past_cap, echoes)  # as the child does
    assert deferred() == event  # as the writer does when the child cannot
    assert KEYBODY[:40].encode() not in orjson.dumps(event)
