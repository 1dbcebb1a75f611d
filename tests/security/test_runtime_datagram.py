"""Runtime attack: a guarded tool reaches a loopback service without connect(): a UDP datagram
(sendto, sendmsg with an address) or a TCP Fast Open connection (sendto with MSG_FASTOPEN, which
connects and sends the data in the SYN). Refused in strict mode before the system call: nothing reaches
the listener, and the tape holds the connect event BLOCKED with the audit event it came from."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from failcore import Blocked, guard, run
from tests.runtime.helpers import runtime_events


@pytest.fixture
def udp_listener() -> Iterator[socket.socket]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.setblocking(False)
    yield listener
    listener.close()


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    yield listener
    listener.close()


def udp_sendto(address: tuple[str, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"exfil-udp", address)


def udp_sendmsg(address: tuple[str, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendmsg([b"exfil-", b"udp"], [], 0, address)


@pytest.mark.parametrize(("send", "event"), [(udp_sendto, "socket.sendto"), (udp_sendmsg, "socket.sendmsg")])
def test_a_datagram_to_loopback_is_refused_before_it_is_sent(
    workdir: Path,
    tmp_path: Path,
    udp_listener: socket.socket,
    send: Callable[[tuple[str, int]], None],
    event: str,
) -> None:
    tape = tmp_path / "tape"
    address = udp_listener.getsockname()
    with run(tape=tape, strict=True), pytest.raises(Blocked) as refused:
        guard(send)(address)
    assert refused.value.rule == "net.loopback"
    with pytest.raises(BlockingIOError):
        udp_listener.recvfrom(100)  # no datagram arrived
    connect, tool = runtime_events(tape)
    assert (connect["kind"], connect["decision"], connect["rule"]) == ("connect", "BLOCK", "net.loopback")
    assert connect["connect"] == {"address": "127.0.0.1", "family": "ipv4", "event": event}
    assert connect["target"] == {"host": "127.0.0.1", "port": address[1], "scheme": "udp"}
    assert (tool["outcome"], tool["tool"]["effects"]["connect"], tool["tool"]["effects"]["blocked"]) == (
        "BLOCKED",
        1,
        1,
    )


def test_tcp_fast_open_to_loopback_is_refused_before_the_syn(
    workdir: Path, tmp_path: Path, tcp_listener: socket.socket
) -> None:
    tape = tmp_path / "tape"
    address = tcp_listener.getsockname()

    @guard
    def fast_open() -> None:
        with socket.socket() as sock:
            sock.sendto(b"GET /latest/meta-data/ HTTP/1.0\r\n\r\n", socket.MSG_FASTOPEN, address)

    with run(tape=tape, strict=True), pytest.raises(Blocked):
        fast_open()
    with pytest.raises(BlockingIOError):
        tcp_listener.accept()  # no connection was made
    connect, tool = runtime_events(tape)
    assert (connect["decision"], connect["rule"], connect["connect"]["event"]) == (
        "BLOCK",
        "net.loopback",
        "socket.sendto",
    )
    assert connect["target"]["scheme"] == "tcp"  # a TCP Fast Open connection is TCP
    assert tool["outcome"] == "BLOCKED"


def test_an_allowed_datagram_goes_out_and_is_recorded_once_per_address(
    workdir: Path, tmp_path: Path, udp_listener: socket.socket
) -> None:
    """A destination the policy allows: every datagram is checked and sent, and the tape holds one
    event per address and verdict, not one per datagram."""
    tape, policy = tmp_path / "tape", tmp_path / "policy.yaml"
    policy.write_text("version: 1\nnetwork:\n  deny: [metadata]\n")
    address = udp_listener.getsockname()

    @guard
    def chatty() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(5):
                sock.sendto(b"metric:1|c", address)

    with run(tape=tape, policy=policy, strict=True):
        chatty()
    assert [udp_listener.recvfrom(100)[0] for _ in range(5)] == [b"metric:1|c"] * 5
    connect, tool = runtime_events(tape)
    assert (connect["decision"], connect["connect"]["event"]) == ("ALLOW", "socket.sendto")
    assert (tool["outcome"], tool["tool"]["effects"]["connect"]) == ("ok", 1)


def test_a_refused_datagram_retried_after_blocked_is_refused_again(
    workdir: Path, tmp_path: Path, udp_listener: socket.socket
) -> None:
    """A tool that catches Blocked and sends again gets no datagram out either."""
    tape = tmp_path / "tape"
    address = udp_listener.getsockname()

    @guard
    def retry() -> int:
        refused = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(3):
                try:
                    sock.sendto(b"exfil-udp", address)
                except Blocked:
                    refused += 1
        return refused

    with run(tape=tape, strict=True):
        assert retry() == 3
    with pytest.raises(BlockingIOError):
        udp_listener.recvfrom(100)
    events = runtime_events(tape)
    assert [e["decision"] for e in events if e["kind"] == "connect"] == ["BLOCK"] * 3
    assert events[-1]["outcome"] == "BLOCKED"
