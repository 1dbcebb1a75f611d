"""Runtime attack: a guarded tool opens a socket to the cloud metadata service (or a loopback service).
Refused in strict mode before connect(2): the socket never connects, no packet leaves, nothing reaches
a listener; the tape names the rule."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest

from failcore import Blocked, guard, run
from tests.runtime.helpers import runtime_events


@guard
def open_socket(family: int, address: tuple[str, int]) -> None:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(2)
    try:
        sock.connect(address)
    except Blocked:
        with pytest.raises(OSError) as unconnected:
            sock.getpeername()
        assert unconnected.value.errno == errno.ENOTCONN  # connect(2) never ran
        raise
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("family", "address"),
    [
        (socket.AF_INET, "169.254.169.254"),
        (socket.AF_INET6, "fd00:ec2::254"),
        (socket.AF_INET6, "::ffff:169.254.169.254"),
    ],
)
def test_metadata_address_refused_before_any_packet(
    workdir: Path, tmp_path: Path, family: int, address: str
) -> None:
    tape = tmp_path / "tape"
    with run(tape=tape, strict=True), pytest.raises(Blocked) as refused:
        open_socket(family, (address, 80))
    assert refused.value.rule == "net.metadata"
    connect, tool = runtime_events(tape)
    assert (connect["kind"], connect["decision"], connect["rule"]) == ("connect", "BLOCK", "net.metadata")
    assert connect["connect"]["address"] == address and connect["target"]["port"] == 80
    assert (tool["outcome"], tool["tool"]["effects"]["blocked"]) == ("BLOCKED", 1)


def test_loopback_service_refused_and_nothing_reaches_it(workdir: Path, tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    try:
        with run(tape=tmp_path / "tape", strict=True), pytest.raises(Blocked):
            open_socket(socket.AF_INET, server.getsockname())
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


def test_a_metadata_host_name_is_refused_before_the_dns_query(workdir: Path, tmp_path: Path) -> None:
    tape = tmp_path / "tape"

    @guard
    def resolve() -> object:
        return socket.getaddrinfo("metadata.google.internal", 80)

    with run(tape=tape, strict=True), pytest.raises(Blocked) as refused:
        resolve()
    assert refused.value.rule == "net.metadata"
    connect, tool = runtime_events(tape)
    assert (
        connect["connect"]["event"] == "socket.getaddrinfo"
        and connect["target"]["host"] == "metadata.google.internal"
    )
    assert tool["outcome"] == "BLOCKED"
