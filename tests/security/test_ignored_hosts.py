"""Attack: reach a host the user passed through with mitmproxy's `ignore_hosts` / `allow_hosts`.

mitmproxy relays such a tunnel with no hook (its TCP layer has no flow): its content can't be inspected,
and the tape said nothing at all, however often an agent used it. Now each passed-through tunnel is a
`tcp.passthrough` event (where, when, the CONNECT's verdict, content not inspected nor counted). The
logging upstream echoes raw TCP back."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.helpers import read_tape
from tests.security.helpers import (
    echo_then_stop,
    free_port,
    read_head_only,
    read_until_closed,
    tcp_events,
    tunnel,
)
from tests.security.upstream import LoggingUpstream

PAYLOAD = b"\x00\x01\x02passed-through\xff"
ALLOW = "version: 1\nmode: enforce\ndefault: ALLOW\n"


def _passthrough(tape: Path) -> list[dict]:
    return [e for e in read_tape(tape) if e.get("action") == "tcp.passthrough"]


def test_a_tunnel_to_an_ignored_host_is_on_the_tape(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(ALLOW), sets=[r"ignore_hosts=^127\.0\.0\.1:"])
    with tunnel(proxy.port, plain_logging_upstream) as sock:
        sock.sendall(PAYLOAD)
        assert read_until_closed(sock, len(PAYLOAD)) == PAYLOAD
    assert plain_logging_upstream.received_bytes() == PAYLOAD
    proxy.stop()
    (event,) = _passthrough(tmp_path / "tape")
    assert event["target"] == {"host": "127.0.0.1", "port": plain_logging_upstream.port, "scheme": "tcp"}
    assert (event["decision"], event["outcome"]) == ("ALLOW", "ok")
    assert event["detail"]["passed_through_by"] == "ignore_hosts" and event["detail"]["inspected"] is False
    assert event["ts_end"] >= event["ts_start"] > 0
    assert tcp_events(tmp_path / "tape", wait=0) == []  # (not handed to failcore as raw TCP)


def test_a_tunnel_outside_allow_hosts_is_on_the_tape(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(ALLOW), sets=[r"allow_hosts=^api\.example\.com:"])
    with tunnel(proxy.port, plain_logging_upstream) as sock:
        sock.sendall(PAYLOAD)
        assert read_until_closed(sock, len(PAYLOAD)) == PAYLOAD
    proxy.stop()
    (event,) = _passthrough(tmp_path / "tape")
    assert event["detail"]["passed_through_by"] == "allow_hosts"
    assert event["target"]["port"] == plain_logging_upstream.port


def test_a_tunnel_open_when_the_proxy_stops_is_on_the_tape(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(ALLOW), sets=[r"ignore_hosts=^127\.0\.0\.1:"])
    echo_then_stop(proxy, plain_logging_upstream, PAYLOAD)
    (event,) = _passthrough(tmp_path / "tape")
    assert event["detail"]["open_when_the_proxy_stopped"] is True and event["ts_end"] is None


def _connect_to_nothing(proxy_port: int) -> bytes:
    port = free_port()  # nothing listens there
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=30) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        head = read_head_only(sock)
        sock.sendall(PAYLOAD)
        read_until_closed(sock, 1)
    return head


def test_a_tunnel_whose_upstream_refuses_at_connect_is_a_failed_connect(
    start_proxy, policy_file, tmp_path: Path
) -> None:
    """mitmproxy's default (eager) strategy connects upstream at the CONNECT: nothing is passed through."""
    proxy = start_proxy(policy_file(ALLOW), sets=[r"ignore_hosts=^127\.0\.0\.1:"])
    assert _connect_to_nothing(proxy.port).startswith(b"HTTP/1.1 502")
    proxy.stop()
    events = read_tape(tmp_path / "tape")
    assert [e["outcome"] for e in events if e.get("action") == "http.connect"] == ["FAIL"]
    assert _passthrough(tmp_path / "tape") == []


def test_a_passed_through_tunnel_whose_upstream_refuses_is_a_failure(
    start_proxy, policy_file, tmp_path: Path
) -> None:
    """The lazy strategy answers the CONNECT first: the tunnel is passed through, its upstream then fails."""
    sets = [r"ignore_hosts=^127\.0\.0\.1:", "connection_strategy=lazy"]
    proxy = start_proxy(policy_file(ALLOW), sets=sets)
    assert _connect_to_nothing(proxy.port).startswith(b"HTTP/1.1 200")
    proxy.stop()
    (event,) = _passthrough(tmp_path / "tape")
    assert event["outcome"] == "FAIL" and event["fail_reason"] == "connect_error" and event["error"]


def test_shown_as_raw_tcp_it_is_recorded_once(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """`show_ignored_hosts=true`: mitmproxy hands the tunnel over as raw TCP, failcore's tcp.stream."""
    proxy = start_proxy(policy_file(ALLOW), sets=[r"ignore_hosts=^127\.0\.0\.1:", "show_ignored_hosts=true"])
    with tunnel(proxy.port, plain_logging_upstream) as sock:
        sock.sendall(PAYLOAD)
        assert read_until_closed(sock, len(PAYLOAD)) == PAYLOAD
    proxy.flush()
    (stream,) = tcp_events(tmp_path / "tape")
    assert (stream["bytes_out"], stream["bytes_in"]) == (len(PAYLOAD), len(PAYLOAD))
    proxy.stop()
    assert _passthrough(tmp_path / "tape") == []


def test_a_refused_connect_to_an_ignored_host_is_not_passed_through(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    policy = "version: 1\nmode: enforce\ndefault: BLOCK\n"
    proxy = start_proxy(policy_file(policy), sets=[r"ignore_hosts=^127\.0\.0\.1:"])
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        authority = f"127.0.0.1:{plain_logging_upstream.port}"
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        assert not read_head_only(sock).startswith(b"HTTP/1.1 200")
    assert plain_logging_upstream.received_bytes() == b""
    proxy.stop()
    assert _passthrough(tmp_path / "tape") == []
