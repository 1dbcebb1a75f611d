"""What the DLP evidence worker's tests share (tests/security/test_evidence_worker.py,
test_past_cap_evidence_worker.py, test_past_cap_straddle_masking.py): events with secrets, the scanner
the worker rebuilds, a past-cap proxy's settings and a fresh past-cap scan-process manager."""

from __future__ import annotations

import time

import orjson

from failcore.dlp.pending import wait_until_built
from failcore.dlp.rules import policy_rules
from failcore.dlp.scanner import DlpScanner
from failcore.evidence.scanworker import DeferredScan, ScanOffload, ScanOrigin, rules_sha256
from failcore.policy.load import load_policy
from failcore.shipped import default_policy_path

# Test values built at run time, shaped like the real credentials the built-in rules know.
AWS_KEY = "AKIA" + "IOSFODNN7" + "EXAMPLQ"
GITHUB_TOKEN = "ghp_" + "x7Yq2" * 7 + "a"
SALT = b"0123456789abcdef"


def event_with_secrets(marker: str) -> dict[str, object]:
    """A network event as the proxy builds it before its DLP pass, with secrets in a header and a body."""
    body = orjson.dumps({"note": marker, "aws": AWS_KEY, "gh": GITHUB_TOKEN}).decode()
    return {
        "kind": "network",
        "v": 1,
        "run": "run-test",
        "ts_start": 1.5,
        "ts_end": 2.25,
        "flow": marker,
        "target": {"host": "api.example.test", "port": 443, "scheme": "https"},
        "method": "POST",
        "path": "/v1/upload?token=" + GITHUB_TOKEN,
        "summary": "POST /v1/upload",
        "request": {
            "http_version": "HTTP/1.1",
            "headers": [["content-type", "application/json"], ["x-debug", AWS_KEY]],
            "body": {"text": body, "size": len(body), "truncated": False},
        },
        "response": {
            "http_version": "HTTP/1.1",
            "headers": [["content-type", "application/json"]],
            "body": {"text": '{"ok":true}', "size": 11, "truncated": False},
            "reason": "OK",
        },
        "warnings": [],
    }


def origin_and_scanner() -> tuple[ScanOrigin, DlpScanner]:
    path = default_policy_path()
    policy = load_policy(path)
    scanner = DlpScanner.for_policy(policy, SALT)
    assert scanner is not None
    # The full engine, as the worker's: while a first start compiles, an interim RE2-backed engine
    # finds the same hits but names its own backend in the event's `dlp.engine`.
    wait_until_built(scanner.engine)
    return ScanOrigin(
        str(path), policy.sha256, policy.mode, SALT, rules_sha256(policy_rules(policy))
    ), scanner


def offload_until_ready(offload: ScanOffload, make: DeferredScan) -> list[object]:
    deadline = time.monotonic() + 120
    while True:
        out = offload([make])
        if not isinstance(out[0], DeferredScan):
            return out
        assert time.monotonic() < deadline, "the scan worker never became ready"
        time.sleep(0.1)


POLICY = "version: 1\nmode: observe\ndefault: ALLOW\n"
PROXY_CAP = 65_536
SETS = [f"failcore_body_cap={PROXY_CAP}", f"failcore_stream_threshold={PROXY_CAP}"]
