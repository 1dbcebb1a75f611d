"""A full disk under the tape (issue 9 item 4): with `fail_open: false` nothing leaves while its
evidence cannot be written; with fail-open traffic goes on and the loss is on the tape for `verify`.

The disk is real: a small tmpfs mounted for the test, filled until write(2) fails with ENOSPC."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import wsproto
import wsproto.events as wse

from tests.helpers import REPO, ProxyThread, network_events, proxied_client, read_tape, skip_or_fail
from tests.security.tapetools import verify
from tests.security.upstream import LoggingUpstream

FAIL_CLOSED = REPO / "policies" / "examples" / "fail-closed.yaml"
FAIL_OPEN = "version: 1\nmode: enforce\ndefault: ALLOW\n"
DISK_MB = 24  # more than the default 16 MiB reserve, so the proxy starts healthy
REQUESTS = 30


class SmallDisk:
    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.filler = mountpoint / "filler"

    def fill(self) -> None:
        """Write until the file system refuses: ENOSPC, as a real full disk."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 1 << 12):
                chunk = b"\0" * size
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, chunk)
            with pytest.raises(OSError) as refused:
                os.write(fd, b"\0" * 4096)
            assert refused.value.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    if os.geteuid() != 0:
        skip_or_fail("mounting a small tmpfs to fill needs root (CI runs the suite as root)")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0700", "tmpfs", str(mountpoint)], check=True
    )
    try:
        yield SmallDisk(mountpoint)
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def writer_fault(proxy: ProxyThread) -> str | None:
    recorder = proxy.proxy.master.addons.get("failcore").recorder  # type: ignore[union-attr]
    return proxy.call(lambda: recorder.writer.fault())


def writer_dropped(proxy: ProxyThread) -> int:
    recorder = proxy.proxy.master.addons.get("failcore").recorder  # type: ignore[union-attr]
    return proxy.call(lambda: recorder.writer.dropped)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_fail_closed_forwards_nothing_while_the_tape_cannot_be_written(
    start_proxy, small_disk: SmallDisk, logging_upstream: LoggingUpstream, capsys
) -> None:
    tape = small_disk.mountpoint / "tape"
    proxy = start_proxy(FAIL_CLOSED, upstream_ca=logging_upstream.ca_path, tape=tape)
    with proxied_client(proxy) as client:
        before = client.post(f"{logging_upstream.url}/before", content=b"before-marker")
        assert before.status_code == 200
        proxy.flush()

        small_disk.fill()
        refused = [
            client.post(f"{logging_upstream.url}/while-full/{i}", content=f"full-marker-{i:02d}".encode())
            for i in range(REQUESTS)
        ]
        assert [r.status_code for r in refused] == [503] * REQUESTS
        assert b"full-marker" not in logging_upstream.received_bytes()
        # The refusals' own evidence hit the full disk: write(2) itself failed with ENOSPC.
        wait_until(lambda: "No space left" in (writer_fault(proxy) or ""), "the writer to hit ENOSPC")
        # A new tunnel is refused at CONNECT: no connection to the upstream is even opened.
        connections = len(logging_upstream.connections)
        with proxied_client(proxy) as fresh, pytest.raises(httpx.ProxyError, match="503"):
            fresh.post(f"{logging_upstream.url}/while-full/new-tunnel", content=b"full-marker-tunnel")
        assert len(logging_upstream.connections) == connections
        streamed = client.post(
            f"{logging_upstream.url}/while-full/stream",
            content=iter([b"full-marker-chunked-", b"upload"]),  # no Content-Length: streamed upload
        )

        small_disk.free()
        wait_until(lambda: writer_fault(proxy) is None, "the writer to recover")
        after = client.post(f"{logging_upstream.url}/after", content=b"after-marker")
        assert after.status_code == 200
    proxy.stop()

    assert streamed.status_code == 503
    assert {r.headers["x-failcore-reason"] for r in [*refused, streamed]} == {"evidence-unavailable"}
    assert refused[0].json()["error"]["type"] == "failcore_evidence_unavailable"
    seen = logging_upstream.received_bytes()
    assert b"before-marker" in seen and b"after-marker" in seen
    assert b"full-marker" not in seen and b"/while-full" not in seen

    events = read_tape(tape)
    assert [e["path"] for e in network_events(events) if e["outcome"] == "ok"] == ["/before", "/after"]
    for e in network_events(events):  # refusals whose evidence fit in the segment's last page
        if e["path"].startswith("/while-full"):
            assert (e["status"], e["outcome"], e["fail_reason"]) == (503, "FAIL", "internal_error")
    dropped = [e for e in events if e["kind"] == "dropped"]
    assert dropped, "the refusals' lost evidence is counted on the tape"
    run_end = next(e for e in events if e["kind"] == "run_end")
    assert run_end["detail"]["refused_no_evidence"] == REQUESTS + 2  # + the chunked upload and the CONNECT
    code, report = verify(capsys, tape)
    assert code == 6, report
    assert report["status"] == "dropped"


def test_fail_open_keeps_traffic_going_and_verify_reports_the_loss(
    start_proxy, policy_file, small_disk: SmallDisk, logging_upstream: LoggingUpstream, capsys
) -> None:
    tape = small_disk.mountpoint / "tape"
    proxy = start_proxy(policy_file(FAIL_OPEN), upstream_ca=logging_upstream.ca_path, tape=tape)
    # The run's own first events are on disk before it fills: only the exchanges below can be lost (the
    # writer gathers batches; under load they could still be queued when the disk fills).
    proxy.flush()
    with proxied_client(proxy) as client:
        small_disk.fill()
        replies = [
            client.post(f"{logging_upstream.url}/while-full/{i}", content=f"full-marker-{i:02d}".encode())
            for i in range(REQUESTS)
        ]
        wait_until(lambda: writer_dropped(proxy) > 0, "the writer to lose events to ENOSPC")
        small_disk.free()
    proxy.stop()

    assert [r.status_code for r in replies] == [200] * REQUESTS
    seen = logging_upstream.received_bytes()
    assert all(f"full-marker-{i:02d}".encode() in seen for i in range(REQUESTS))
    events = read_tape(tape)
    dropped = [e for e in events if e["kind"] == "dropped"]
    assert dropped, "the loss is recorded on the tape"
    # Each exchange is on the tape or counted as lost (a few may fit in the segment's last page).
    recorded = [e for e in network_events(events) if e["path"].startswith("/while-full/")]
    assert len(recorded) + dropped[-1]["total"] == REQUESTS
    assert next(e for e in events if e["kind"] == "run_end")["detail"]["dropped"] == dropped[-1]["total"]
    code, report = verify(capsys, tape)
    assert code == 6, report
    assert report["status"] == "dropped"
    assert report["dropped"] == dropped[-1]["total"]
    capsys.readouterr()


def test_fail_closed_drops_websocket_messages_while_the_tape_cannot_be_written(
    start_proxy, small_disk: SmallDisk, logging_upstream: LoggingUpstream
) -> None:
    tape = small_disk.mountpoint / "tape"
    proxy = start_proxy(FAIL_CLOSED, upstream_ca=logging_upstream.ca_path, tape=tape)
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    authority = f"127.0.0.1:{logging_upstream.port}"
    raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    assert raw.recv(4096).startswith(b"HTTP/1.1 200")
    tls = ssl.create_default_context(cafile=str(proxy.ca_cert)).wrap_socket(raw, server_hostname="127.0.0.1")
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    tls.sendall(ws.send(wse.Request(host=authority, target="/ws")))
    echoes: list[str] = []
    accepted = False

    def until_echoes(count: int) -> None:
        nonlocal accepted
        while len(echoes) < count or not accepted:
            ws.receive_data(tls.recv(65536))
            for event in ws.events():
                accepted = accepted or isinstance(event, wse.AcceptConnection)
                if isinstance(event, wse.TextMessage):
                    echoes.append(event.data)

    until_echoes(0)
    tls.sendall(ws.send(wse.TextMessage(data="ws-before")))
    until_echoes(1)
    small_disk.fill()
    tls.sendall(ws.send(wse.TextMessage(data="ws-while-full")))
    recorder = proxy.proxy.master.addons.get("failcore").recorder  # type: ignore[union-attr]
    wait_until(lambda: proxy.call(lambda: recorder.refused) == 1, "the proxy to refuse the message")
    small_disk.free()
    wait_until(lambda: writer_fault(proxy) is None, "the writer to recover")
    tls.sendall(ws.send(wse.TextMessage(data="ws-after")))
    until_echoes(2)
    tls.close()
    # Messages on one connection arrive in order: had the upstream seen the middle one, its echo
    # would have come back before the last one's.
    assert echoes == ["ws-before", "ws-after"]
