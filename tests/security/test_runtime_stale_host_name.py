"""Runtime attack: a guarded tool borrows a name the policy allows for an address it does not resolve to.
It asks for `localhost` (allowed by name: `network.allow: [localhost]`), then connects to 127.0.0.2, a
loopback address `localhost` never resolved to. The connection is judged by its own address (refused,
net.loopback), not by the last name the thread looked up; nothing reaches the listener on 127.0.0.2."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from failcore import Blocked, guard, run
from tests.runtime.helpers import runtime_events

POLICY = "version: 1\nnetwork:\n  allow: [localhost]\n"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.2", 0))
    sock.listen(1)
    sock.setblocking(False)
    yield sock
    sock.close()


def test_a_name_resolved_before_does_not_admit_another_address(
    workdir: Path, tmp_path: Path, listener: socket.socket
) -> None:
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY)
    port = listener.getsockname()[1]

    @guard
    def borrow() -> None:
        socket.getaddrinfo("localhost", port, socket.AF_INET, socket.SOCK_STREAM)
        with socket.socket() as sock:
            sock.connect(("127.0.0.2", port))

    with run(policy=policy, tape=tape, strict=True), pytest.raises(Blocked) as refused:
        borrow()
    assert refused.value.rule == "net.loopback"
    with pytest.raises(BlockingIOError):
        listener.accept()  # no connection was made
    connect, tool = runtime_events(tape)
    assert (connect["decision"], connect["rule"]) == ("BLOCK", "net.loopback")
    assert connect["target"] == {"host": "127.0.0.2", "port": port, "scheme": "tcp"}
    assert (tool["outcome"], tool["rule"]) == ("BLOCKED", "net.loopback")


def test_the_name_an_address_was_resolved_from_is_used(workdir: Path, tmp_path: Path) -> None:
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        with run(policy=policy, tape=tape, strict=True):
            guard(socket.create_connection)(("localhost", port), timeout=5).close()
    connect = next(e for e in runtime_events(tape) if e["kind"] == "connect" and e["decision"] == "ALLOW")
    assert connect["target"]["host"] == "localhost"
    assert connect["connect"]["address"] in ("127.0.0.1", "::1")
