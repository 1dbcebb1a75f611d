"""A listen backlog is looked at on sockets whose descriptor is 1024 or more (select.select refused
them: ValueError). Both users: the quick start's listener and the runtime event channel."""

from __future__ import annotations

import os
import resource
import shutil
import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from failcore.quickstart import QuickStart
from failcore.readiness import readable_now
from failcore.runtime.channel import EventChannel

HIGH_FD = 1500


@pytest.fixture
def high_listener() -> Iterator[socket.socket]:
    """A listening socket on descriptor HIGH_FD (above select's FD_SETSIZE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= HIGH_FD:
        pytest.skip(f"the file descriptor limit ({hard}) is below {HIGH_FD}")
    if soft <= HIGH_FD:
        resource.setrlimit(resource.RLIMIT_NOFILE, (HIGH_FD + 1, hard))
    try:
        with socket.create_server(("127.0.0.1", 0)) as low:
            os.dup2(low.fileno(), HIGH_FD)
        listener = socket.socket(fileno=HIGH_FD)
        with listener:
            yield listener
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def waiting_connection(listener: socket.socket) -> socket.socket:
    return socket.create_connection(listener.getsockname()[:2], timeout=5)


def test_readable_now(high_listener: socket.socket) -> None:
    assert high_listener.fileno() >= 1024
    assert not readable_now(high_listener)
    with waiting_connection(high_listener):
        assert readable_now(high_listener)


def test_quickstart_sees_a_connection_waiting_on_a_high_descriptor(high_listener: socket.socket) -> None:
    quick = QuickStart(SimpleNamespace(settings=None))  # type: ignore[arg-type]
    quick.listener = high_listener
    assert not quick.pending()
    with waiting_connection(high_listener):
        assert quick.pending()


def test_event_channel_sees_a_connection_waiting_on_a_high_descriptor(high_listener: socket.socket) -> None:
    channel = EventChannel("run", lambda event: None)
    try:
        channel._server = SimpleNamespace(sockets=[high_listener])  # type: ignore[assignment]
        assert not channel.used()
        with waiting_connection(high_listener):
            assert channel.used()
    finally:
        shutil.rmtree(channel.directory, ignore_errors=True)
