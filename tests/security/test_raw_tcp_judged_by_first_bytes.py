"""Regression: judging raw TCP as possible smuggled HTTP refused every raw stream (review 2, findings
1 and 2).

Since raw TCP was judged by the HTTP rules and budgets it could get past (test_http_smuggled_as_raw_tcp),
a budget without `hosts` (`scope: {provider: openai}`) or a path rule without a host refused all raw
TCP to every host: ssh through a CONNECT tunnel was refused as `budget:openai-daily`. Now the client's
first bytes decide: bytes that start like an HTTP request (a method token and a space, after any
whitespace/NUL a server skips) get the strict verdict, other bytes the plain TCP one. While the client
has sent only whitespace/NUL (up to 64 bytes) none of it is relayed; past that bound the stream counts as
HTTP. Each test goes through the real proxy and checks what the upstream received and the tape."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from tests.security.helpers import (
    NO_ADMIN_PATH_RULE,
    admin_post,
    assert_tcp_refused,
    read_until_closed,
    tcp_events,
    through_tunnel,
    tunnel,
)
from tests.security.upstream import LoggingUpstream

SSH_HELLO = b"SSH-2.0-OpenSSH_9.6\r\n"
HOSTLESS_BUDGET = """
version: 1
mode: {mode}
default: ALLOW
budgets:
  - id: openai-daily
    window: day
    scope: {{provider: openai}}
    limits: {{cost_usd: 5}}
"""


@pytest.mark.parametrize("policy", [HOSTLESS_BUDGET, NO_ADMIN_PATH_RULE], ids=["budget", "path-rule"])
def test_ssh_is_relayed_under_a_hostless_http_rule_or_budget(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, policy: str
) -> None:
    proxy = start_proxy(policy_file(policy.format(mode="enforce")))
    echoed = through_tunnel(proxy, plain_logging_upstream, SSH_HELLO, want=len(SSH_HELLO))
    assert echoed == SSH_HELLO == plain_logging_upstream.received_bytes()
    (event,) = tcp_events(tmp_path / "tape", wait=60)
    assert (event["decision"], event["outcome"], event["rule"]) == ("ALLOW", "ok", None)
    assert event["bytes_out"] == len(SSH_HELLO) and not event["would_block"]


def test_leading_whitespace_then_binary_is_relayed_whole(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """Held whitespace is relayed with the message that settles the verdict, in order."""
    proxy = start_proxy(policy_file(NO_ADMIN_PATH_RULE.format(mode="enforce")))
    # The "\r\n" its own message (held: nothing to wait for but time).
    echoed = through_tunnel(proxy, plain_logging_upstream, b"\r\n", b"\x00\x16\x03raw", want=8)
    assert echoed == b"\r\n\x00\x16\x03raw" == plain_logging_upstream.received_bytes()
    (event,) = tcp_events(tmp_path / "tape", wait=60)
    assert (event["decision"], event["outcome"], event["bytes_out"]) == ("ALLOW", "ok", 8)


def test_held_whitespace_of_a_client_that_closes_is_counted(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """A client that sends "\\r\\n" and closes: its bytes were held unjudged when the stream ended. They
    are not relayed (mitmproxy half-closes the server first), and the tape says the client sent them."""
    proxy = start_proxy(policy_file(NO_ADMIN_PATH_RULE.format(mode="enforce")))
    with tunnel(proxy.port, plain_logging_upstream) as sock:
        sock.sendall(b"\r\n")
        time.sleep(0.5)  # its own message, held
        sock.shutdown(socket.SHUT_WR)
        answer = read_until_closed(sock, 1)
    proxy.flush()
    assert answer == b"" and plain_logging_upstream.received_bytes() == b""
    (event,) = tcp_events(tmp_path / "tape", wait=60)
    assert (event["decision"], event["outcome"], event["bytes_out"]) == ("ALLOW", "ok", 0)
    assert event["detail"]["held_bytes"] == 2 and "2 B held" in event["summary"]


def test_whitespace_message_then_request_in_the_next_is_refused(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(NO_ADMIN_PATH_RULE.format(mode="enforce")))
    # The "\r\n" its own message: nothing may leave before the next one shows what it is.
    request = admin_post(plain_logging_upstream)
    answer = through_tunnel(proxy, plain_logging_upstream, b"\r\n", request, want=1)
    event = assert_tcp_refused(answer, plain_logging_upstream, tmp_path / "tape", "no-admin")
    assert "starts like HTTP" in event["reason"] and event["detail"]["blocked_by"] == "policy"


@pytest.mark.parametrize("request_line", [b"post /admin/x HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"])
def test_lower_case_method_and_h2_preface_count_as_http(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, request_line: bytes
) -> None:
    proxy = start_proxy(policy_file(HOSTLESS_BUDGET.format(mode="enforce")))
    answer = through_tunnel(proxy, plain_logging_upstream, b"\n" + request_line, want=1)
    assert_tcp_refused(answer, plain_logging_upstream, tmp_path / "tape", "budget:openai-daily")


def test_whitespace_past_the_bound_is_refused(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(NO_ADMIN_PATH_RULE.format(mode="enforce")))
    # 80 bytes: never decided by what follows.
    answer = through_tunnel(proxy, plain_logging_upstream, b"\r\n" * 40, want=1)
    assert_tcp_refused(answer, plain_logging_upstream, tmp_path / "tape", "no-admin")


def test_observe_relays_held_bytes_in_order_and_marks_http(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(NO_ADMIN_PATH_RULE.format(mode="observe")))
    request = admin_post(plain_logging_upstream)
    echoed = through_tunnel(proxy, plain_logging_upstream, b"\r\n", request, want=2 + len(request))
    assert echoed == b"\r\n" + request == plain_logging_upstream.received_bytes()
    (event,) = tcp_events(tmp_path / "tape", wait=60)
    assert (event["decision"], event["would_block"], event["rule"]) == ("WARN", True, "no-admin")


def test_observe_records_ssh_as_allowed(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(HOSTLESS_BUDGET.format(mode="observe")))
    echoed = through_tunnel(proxy, plain_logging_upstream, SSH_HELLO, want=len(SSH_HELLO))
    assert echoed == SSH_HELLO
    (event,) = tcp_events(tmp_path / "tape", wait=60)
    assert (event["decision"], event["would_block"]) == ("ALLOW", False)


class GreetingServer:
    """A server-first protocol (MySQL, SSH, SMTP): it greets, then keeps what the client sends."""

    GREETING = b"\x4a\x00\x00\x00\x0a8.0.36\x00greeting"

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(30)
            conn.sendall(self.GREETING)  # at once, as MySQL, SSH and SMTP servers do
            while data := conn.recv(65536):
                self.received += data

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.mark.parametrize("read_at", ["once", "after the greeting came"])
def test_server_greeting_passes_while_the_client_is_held(
    start_proxy, policy_file, tmp_path: Path, read_at: str
) -> None:
    """The greeting comes at once, often with the CONNECT's 200 in one read (`after the greeting came`
    makes that certain): it is the tunnel's, not part of the 200. (A reader that kept everything up to
    the head's end as the head lost it, about 1 run in 10 with failcore, never with bare mitmdump:
    failcore's http_connected hooks let the greeting arrive before the 200 leaves; no byte is lost.)"""
    server = GreetingServer()
    try:
        proxy = start_proxy(policy_file(HOSTLESS_BUDGET.format(mode="enforce")))
        settle = 0.5 if read_at != "once" else 0
        with tunnel(proxy.port, server, settle=settle) as sock:  # type: ignore[arg-type]
            greeting = read_until_closed(sock, len(server.GREETING))
            sock.sendall(b"\r\n")  # held: says nothing yet
            time.sleep(0.5)
            held = server.received
            sock.sendall(b"\x20\x00\x00\x01\x85\xa6")  # a MySQL-like binary reply
            deadline = time.monotonic() + 60  # relayed before the client closes (under load too)
            while server.received != b"\r\n\x20\x00\x00\x01\x85\xa6" and time.monotonic() < deadline:
                time.sleep(0.05)
        proxy.flush()
        server.thread.join(10)
    finally:
        server.close()
    assert greeting == server.GREETING and held == b""
    assert server.received == b"\r\n\x20\x00\x00\x01\x85\xa6"
    (event,) = tcp_events(tmp_path / "tape", wait=60)
    assert (event["decision"], event["outcome"]) == ("ALLOW", "ok")
