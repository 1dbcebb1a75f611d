"""Attack: the agent's own Cookie carries part of a secret it sends in the body (the first 40
characters of a private key's base64).

The evidence masked echoed credentials before its DLP scan: the mask spliced into the key broke the
key's match (and the rule's `redacted` allowlist dropped what was left), so the request was blocked
but the tape held every other line of the key in clear. Through the real proxy (the DLP evidence
worker's path, and the writer's own pass): nothing reaches the logging upstream, the tape records the
BLOCK with the private-key hit, and holds no line of the key."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.helpers import tape_bytes
from tests.security.upstream import LoggingUpstream

POLICY = """
version: 1
mode: enforce
default: ALLOW
dlp:
  rule_actions: {private-key: BLOCK}
"""


@pytest.mark.parametrize("worker", ["1", "0"])
def test_a_secret_partly_echoed_in_the_cookie_is_masked_whole(
    start_proxy,
    policy_file,
    plain_logging_upstream: LoggingUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    worker: str,
) -> None:
    monkeypatch.setenv("FAILCORE_EVIDENCE_WORKER", worker)
    up = plain_logging_upstream
    keybody = base64.b64encode(os.urandom(1200)).decode()
    lines = [keybody[i : i + 64] for i in range(0, len(keybody), 64)]
    key = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END RSA PRIVATE KEY-----"
    proxy = start_proxy(policy_file(POLICY))
    with proxied_client(proxy) as client:
        cookie = [("Cookie", "s=" + keybody[:40])]
        r = client.post(f"{up.url}/v1/echo", headers=cookie, content=json.dumps({"k": key}).encode())
    proxy.flush()
    assert r.status_code == 403
    seen = up.received_bytes()
    assert b"/v1/echo" not in seen and keybody[:40].encode() not in seen
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["outcome"], event["rule"]) == ("BLOCK", "BLOCKED", "dlp:private-key")
    hits = [(h["rule"], h["action"], h["location"]) for h in event["dlp"]["hits"]]
    assert ("private-key", "BLOCK", "request.body:/k") in hits
    tape = tape_bytes(tmp_path / "tape")
    assert [line for line in lines if line[:24].encode() in tape] == []
    assert keybody[:40].encode() not in tape
