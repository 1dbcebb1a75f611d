"""Attack: reach a host BLOCKed by its punycode name because mitmproxy shows it decoded (adversarial
review, finding 3).

mitmproxy turns the CONNECT host `xn--bcher-kva.example` into `bücher.example`, so a rule written
`host: xn--bcher-kva.example` no longer matched and the tunnel opened. Hosts and rules are now compared
in their ASCII (IDNA) form, whichever spelling either uses. A test-only addon stands in for DNS: every
upstream connection goes to the logging upstream (after failcore decided)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from mitmproxy.proxy import server_hooks

from tests.helpers import network_events, read_tape
from tests.security.helpers import read_head, read_until_closed
from tests.security.upstream import LoggingUpstream

PUNYCODE = "xn--bcher-kva.example"


class Redirect:
    def __init__(self, port: int) -> None:
        self.port = port

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        data.server.address = ("127.0.0.1", self.port)


@pytest.mark.parametrize("written", [PUNYCODE, "bücher.example", "*.example"])
def test_a_tunnel_to_a_blocked_idn_host_is_refused(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, written: str
) -> None:
    policy = f'version: 1\nmode: enforce\nrules:\n  - {{id: no-idn, host: "{written}", action: BLOCK}}\n'
    proxy = start_proxy(policy_file(policy))
    proxy.call(proxy.proxy.master.addons.add, Redirect(plain_logging_upstream.port))
    authority = f"{PUNYCODE}:80"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = read_head(sock)
        if head.startswith(b"HTTP/1.1 200"):
            sock.sendall(b"raw-tcp-marker\n")
            read_until_closed(sock, 15)
    proxy.flush()
    assert head.startswith(b"HTTP/1.1 403"), head
    assert plain_logging_upstream.received_bytes() == b""
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert (event["action"], event["decision"], event["rule"]) == ("http.connect", "BLOCK", "no-idn")
