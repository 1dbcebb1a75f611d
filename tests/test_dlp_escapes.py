"""A token right after a byte that is not UTF-8, in text as the tape records it (`\\xNN`,
failcore.wiretext): found by the evidence scan where it is recorded (the URL, a header, the target host
in its spellings) and masked there; the blocking scan finds the same hits (failcore.dlp.escapes)."""

from __future__ import annotations

from failcore.dlp.engine import DlpEngine
from failcore.dlp.escapes import escaped_hits, unescaped
from failcore.dlp.rules import builtin_rules
from failcore.dlp.scanner import DlpScanner
from failcore.evidence.dlp import scan_event
from failcore.policy.model import DlpSettings
from failcore.proxy.dlpguard import url_hits

# Assembled at run time so the repository holds no secret-shaped strings.
TOKEN = "ghp_" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7c"
AWS = "AKIA" + "QWERTYUIOPASDFGH"


def _engine() -> DlpEngine:
    return DlpEngine(tuple(builtin_rules()), backend="re2", salt=b"s")


def test_unescaped_reads_each_escape_back_as_its_byte() -> None:
    assert unescaped(b"/a\\xffb\\XFEc") == (b"/a\xffb\xfec", [2, 4])
    assert unescaped(b"/a\\x41b") is None, "only what backslashreplace writes (0x80-0xff)"
    assert unescaped(b"/plain") is None


def test_offsets_map_onto_the_recorded_text() -> None:
    engine = _engine()
    recorded = "/v1/\\xfe\\xff" + TOKEN + "?q=\\xfd"
    assert engine.scan(recorded) == [], "the recorded text alone hides it"
    (hit,) = escaped_hits(engine, recorded)
    assert recorded.encode()[hit.start : hit.end] == TOKEN.encode()
    assert escaped_hits(engine, "/v1/" + TOKEN) == []


def test_the_blocking_scan_reads_the_url_as_sent() -> None:
    engine = _engine()
    sent = "http://h:80/v1/x" + b"\xff".decode("utf-8", "surrogateescape") + TOKEN
    assert [h.rule_id for h in url_hits(engine, sent)] == ["github-pat"]


def test_a_target_host_is_masked_in_its_spellings() -> None:
    scanner = DlpScanner(_engine(), DlpSettings(), True)
    host = "a\\xff" + AWS.lower() + ".example"
    event = {
        "kind": "network",
        "target": {"host": host, "port": 80, "scheme": "http"},
        "path": "/",
        "method": "GET",
        "summary": f"GET {host}",
        "request": {"headers": [], "body": None},
    }
    scan_event(scanner, event)
    assert AWS.lower() not in str(event) and AWS not in str(event)
    assert "aws-access-key-id" in [h["rule"] for h in event["dlp"]["hits"]]
