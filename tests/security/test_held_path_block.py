"""Held attack: a BLOCKed path never reaches the upstream, whichever spelling of the path is used.

Checks the scaffold of this folder too: the logging upstream sees the allowed request and nothing
of the blocked ones, and the tape says which rule blocked what."""

from __future__ import annotations

import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.upstream import LoggingUpstream

POLICY = """
version: 1
mode: enforce
default: ALLOW
rules:
  - id: no-admin
    path: /admin/**
    action: BLOCK
    reason: admin endpoints
"""


@pytest.mark.parametrize("path", ["/admin/users", "/x/../admin/users", "/ADMIN/../admin/users"])
def test_blocked_path_never_reaches_the_upstream(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path, path: str
) -> None:
    proxy = start_proxy(policy_file(POLICY), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        allowed = client.post(f"{logging_upstream.url}/public", content=b"public-marker")
        blocked = client.post(f"{logging_upstream.url}{path}", content=b"blocked-marker")
    proxy.flush()
    assert allowed.status_code == 200
    assert blocked.status_code == 403
    seen = logging_upstream.received_bytes()
    assert b"public-marker" in seen
    assert b"blocked-marker" not in seen and b"/admin" not in seen
    events = network_events(read_tape(tmp_path / "tape"))
    assert sorted((e["method"], e["decision"]) for e in events) == [("POST", "ALLOW"), ("POST", "BLOCK")]
    assert [e["rule"] for e in events if e["decision"] == "BLOCK"] == ["no-admin"]
