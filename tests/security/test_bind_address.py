"""Attack: reach `mitmdump -s addons/failcore_addon.py` from another host (issue 9, item 1).

mitmproxy binds its servers before a `-s` script is loaded, so an addon that only sets `listen_host`
left the real mitmdump listening on 0.0.0.0 and [::]. Each test starts the real binary and reads the
kernel's table of listening sockets (what `ss -ltn` shows)."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from tests.helpers import network_events, read_tape
from tests.security.helpers import free_port, run_mitmdump, stop
from tests.security.upstream import LoggingUpstream

pytestmark = pytest.mark.timeout(180)


def _decode(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    # /proc/net/tcp{,6} stores each 32-bit word in host byte order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words)


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on `port` (what `ss -ltn` lists)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(_decode(address))
    return found


@pytest.mark.parametrize(
    "extra",
    [(), ("--mode", "regular@{port}"), ("--set", "listen_host=")],
    ids=["plain", "mode-regular-at-port", "listen_host-empty"],
)
def test_mitmdump_listens_on_loopback_only(
    tmp_path: Path, plain_logging_upstream: LoggingUpstream, extra: tuple[str, ...]
) -> None:
    port = free_port()
    process, log = run_mitmdump(tmp_path, port, *(a.format(port=port) for a in extra))
    try:
        assert listening_addresses(port) == {"127.0.0.1"}, log.read_text(errors="replace")
        with httpx.Client(proxy=f"http://127.0.0.1:{port}", trust_env=False, timeout=30) as client:
            answer = client.get(f"{plain_logging_upstream.url}/through-loopback")
        assert answer.status_code == 200
    finally:
        stop(process)
    assert b"/through-loopback" in plain_logging_upstream.received_bytes()
    events = read_tape(tmp_path / "tape")
    assert [e["path"] for e in network_events(events)] == ["/through-loopback"]
    assert not [e for e in events if e["kind"] == "listen"]


def test_listening_everywhere_on_purpose_is_warned_and_recorded(tmp_path: Path) -> None:
    port = free_port()
    process, log = run_mitmdump(tmp_path, port, "--set", "listen_host=0.0.0.0")
    try:
        assert listening_addresses(port) == {"0.0.0.0"}
    finally:
        stop(process)
    output = log.read_text(errors="replace")
    assert f"listens on 0.0.0.0:{port}, beyond this host" in output
    (event,) = [e for e in read_tape(tmp_path / "tape") if e["kind"] == "listen"]
    assert event["detail"] == {"mode": "regular", "addresses": [f"0.0.0.0:{port}"], "exposed": True}


def test_is_loopback_covers_every_spelling() -> None:
    from failcore.proxy.listen import is_loopback

    for host in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "192.168.1.2", "::ffff:10.0.0.1", "example.com", ""):
        assert not is_loopback(host), host


def test_clients_of_other_hosts_are_refused_until_the_rebind() -> None:
    """A connection accepted on the wildcard socket before failcore rebound it is refused."""
    from mitmproxy.test import taddons, tflow

    from failcore.proxy.listen import ListenGuard
    from failcore.proxy.session import Session

    guard = ListenGuard(Session())
    with taddons.context(guard) as tctx:
        tctx.configure(guard, listen_host="")
        outsider, local = tflow.tclient_conn(), tflow.tclient_conn()
        outsider.peername, local.peername = ("192.0.2.7", 50000), ("127.0.0.1", 50001)
        guard.client_connected(outsider)
        guard.client_connected(local)
        assert outsider.error and "not on this host" in outsider.error
        assert local.error is None
        # Listening wide on purpose: nobody is refused.
        open_guard = ListenGuard(Session())
        tctx.configure(open_guard, listen_host="0.0.0.0")
        other = tflow.tclient_conn()
        other.peername = ("192.0.2.7", 50002)
        open_guard.client_connected(other)
        assert other.error is None
