"""Attack: open a WebSocket that a `scheme: ws/wss` rule blocks (issue 9, item 7).

The upgrade was judged as the https (or http) GET it travels in, so a wss BLOCK rule never matched and
the upstream answered 101. Each client here writes the upgrade byte for byte; the logging upstream
speaks WebSocket (it would answer 101 and echo)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import httpx

from tests.helpers import network_events, read_tape
from tests.security.helpers import read_head
from tests.security.upstream import LoggingUpstream

POLICY = """
version: 1
mode: enforce
default: ALLOW
rules:
  - id: no-websockets
    scheme: [ws, wss]
    action: BLOCK
    reason: agents may not open WebSockets
"""

UPGRADE = (
    "GET {target} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_wss_rule_refuses_the_upgrade(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(POLICY), upstream_ca=logging_upstream.ca_path)
    authority = f"127.0.0.1:{logging_upstream.port}"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as raw:
        raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        assert read_head(raw).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context(cafile=str(proxy.ca_cert))
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(UPGRADE.format(target="/socket", authority=authority).encode())
            answer = read_head(tls)
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403"), answer
    seen = logging_upstream.received_bytes()
    assert b"Upgrade" not in seen and b"/socket" not in seen
    (event,) = [e for e in network_events(read_tape(tmp_path / "tape")) if e["action"] == "http.request"]
    assert (event["decision"], event["outcome"], event["rule"]) == ("BLOCK", "BLOCKED", "no-websockets")


def test_ws_rule_refuses_a_plain_upgrade(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(POLICY))
    authority = f"127.0.0.1:{plain_logging_upstream.port}"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as raw:
        raw.sendall(UPGRADE.format(target=f"http://{authority}/socket", authority=authority).encode())
        answer = read_head(raw)
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert plain_logging_upstream.received_bytes() == b""
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("BLOCK", "no-websockets")


def test_plain_https_is_not_judged_as_wss(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """The control: the same host answers an ordinary request (the rule is about WebSockets only)."""
    proxy = start_proxy(policy_file(POLICY), upstream_ca=logging_upstream.ca_path)
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    with httpx.Client(proxy=proxy.url, verify=context, timeout=30, trust_env=False) as client:
        assert client.get(f"{logging_upstream.url}/plain").status_code == 200
    assert b"GET /plain" in logging_upstream.received_bytes()


def test_https_block_rule_still_applies_to_an_upgrade(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream
) -> None:
    """A path BLOCK rule written for http cannot be sidestepped by asking for an upgrade."""
    policy = "version: 1\nmode: enforce\nrules:\n  - {id: a, scheme: http, path: /admin, action: BLOCK}\n"
    proxy = start_proxy(policy_file(policy))
    authority = f"127.0.0.1:{plain_logging_upstream.port}"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as raw:
        raw.sendall(UPGRADE.format(target=f"http://{authority}/admin", authority=authority).encode())
        assert read_head(raw).startswith(b"HTTP/1.1 403")
    assert plain_logging_upstream.received_bytes() == b""
