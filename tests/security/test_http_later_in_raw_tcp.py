"""Attack: HTTP sent later in a raw TCP stream whose first bytes are not HTTP.

The first client bytes decide how a raw stream is judged (test_raw_tcp_judged_by_first_bytes): bytes
that are not HTTP get the host/port verdict. An agent could open with bytes that are not HTTP and send
the request after them — behind a PROXY protocol v2 header (its signature starts with CRLF CRLF NUL, then
"QUIT\\n": no method token), or after a SOCKS handshake with a proxy upstream — and a path rule or a budget
that would refuse the request never saw it. Now a client message that ends an HTTP request line
(" HTTP/1.1" and the line's end, wherever the client splits it) in such a stream takes the verdict for
HTTP: refused before the message leaves (the server never receives a whole request line), or recorded
as would-block in observe mode. Each through the real proxy, asserting what the logging upstream got
and the tape."""

from __future__ import annotations

import struct
from pathlib import Path

from tests.security.helpers import (
    NO_ADMIN_PATH_RULE,
    admin_post,
    assert_tcp_refused,
    read_until_closed,
    tcp_events,
    through_tunnel,
    tunnel,
    wait_until_received,
)
from tests.security.upstream import LoggingUpstream

SOCKS5_HELLO = b"\x05\x01\x00"
# PROXY protocol v2 (HAProxy's spec): the signature, PROXY command, TCP over IPv4, 12 bytes of addresses.
PROXY_V2 = (
    b"\r\n\r\n\x00\r\nQUIT\n"
    + b"\x21\x11"
    + struct.pack("!H", 12)
    + bytes([10, 0, 0, 1, 10, 0, 0, 2])
    + struct.pack("!HH", 40000, 80)
)


def test_request_after_a_binary_handshake_is_refused_at_its_line_end(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(NO_ADMIN_PATH_RULE.format(mode="enforce")))
    request = admin_post(plain_logging_upstream)
    line_end = request.index(b"\r\n") + 2
    with tunnel(proxy.port, plain_logging_upstream) as sock:
        sock.sendall(SOCKS5_HELLO)
        assert read_until_closed(sock, len(SOCKS5_HELLO)) == SOCKS5_HELLO  # the server answered
        sock.sendall(request[: line_end - 3])  # "POST /admin/users HTTP/1." (its own message)
        wait_until_received(plain_logging_upstream, SOCKS5_HELLO + request[: line_end - 3])
        sock.sendall(request[line_end - 3 :])
        read_until_closed(sock, 1 << 16)
    proxy.flush()
    got = plain_logging_upstream.received_bytes()
    # What left before the line ended is no request a server acts on; the rest never left.
    assert got == SOCKS5_HELLO + request[: line_end - 3], got
    (event,) = tcp_events(tmp_path / "tape", wait=60)
    assert (event["decision"], event["outcome"], event["rule"]) == ("BLOCK", "BLOCKED", "no-admin")
    assert event["detail"]["http_seen_at"] == len(SOCKS5_HELLO) + line_end
    assert event["bytes_out"] == len(got)


def test_proxy_protocol_header_with_the_request_is_refused_whole(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(NO_ADMIN_PATH_RULE.format(mode="enforce")))
    answer = through_tunnel(
        proxy, plain_logging_upstream, PROXY_V2 + admin_post(plain_logging_upstream), want=1
    )
    assert_tcp_refused(answer, plain_logging_upstream, tmp_path / "tape", "no-admin")


def test_observe_relays_and_marks_the_later_request(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(NO_ADMIN_PATH_RULE.format(mode="observe")))
    payload = PROXY_V2 + admin_post(plain_logging_upstream)
    echoed = through_tunnel(proxy, plain_logging_upstream, payload, want=len(payload))
    assert echoed == payload == plain_logging_upstream.received_bytes()
    (event,) = tcp_events(tmp_path / "tape", wait=60)
    assert (event["decision"], event["would_block"], event["rule"]) == ("WARN", True, "no-admin")


def test_binary_bytes_quoting_http_text_still_pass(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """The control: a status line or a version without a request line's end is not a request."""
    proxy = start_proxy(policy_file(NO_ADMIN_PATH_RULE.format(mode="enforce")))
    payload = b"\x00\x01HTTP/1.1 200 OK\r\nvia HTTP/1.1 proxy\x00" + bytes(range(256))
    echoed = through_tunnel(proxy, plain_logging_upstream, payload, want=len(payload))
    assert echoed == payload == plain_logging_upstream.received_bytes()
    (event,) = tcp_events(tmp_path / "tape", wait=60)
    assert (event["decision"], event["outcome"], event["detail"]["http_seen_at"]) == ("ALLOW", "ok", None)
