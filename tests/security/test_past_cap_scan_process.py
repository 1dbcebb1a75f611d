"""Attacks on the past-cap DLP scan now that it runs in a separate process (failcore.evidence.
pastcapworker): hide a secret megabytes into a binary upload (sized, chunked) or a download of unknown
length, past what the tape keeps, and hope it goes unseen or lands on the tape in clear; kill the scan
process mid-upload and hope the upload breaks, or the tape claims a scan that never happened.

Each test goes through the real proxy and asserts what the upstream received and what the tape holds.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import failcore.evidence.pastcapworker as worker
from tests.helpers import github_token, network_events, proxied_client, read_tape
from tests.security.helpers import tape_bytes
from tests.security.upstream import LoggingUpstream

POLICY = "version: 1\nmode: observe\ndefault: ALLOW\n"
CAP = 65_536
SETS = [f"failcore_body_cap={CAP}", f"failcore_stream_threshold={CAP}"]
MIB = 1 << 20


def binary_body(size: int, secret: bytes, at: int, seed: bytes) -> bytes:
    """`size` incompressible bytes (an archive, model weights) with `secret` at byte `at`."""
    body = bytearray(hashlib.shake_256(seed).digest(size))
    body[at - 1 : at + len(secret) + 1] = b" " + secret + b" "
    return bytes(body)


def pieces(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """A generator body: httpx sends it chunked, with no Content-Length."""
    for i in range(0, len(body), size):
        yield body[i : i + size]


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[worker._Manager]:
    """A fresh scan-process manager for this test's proxy (the proxy runs in this process)."""
    fresh = worker._Manager()
    monkeypatch.setattr(worker, "_manager", fresh)
    yield fresh
    fresh.close()


def wait_for_child(manager: worker._Manager) -> worker.ScanProcess:
    """Started by the first body past the cap; ready once it has built its DLP engine."""
    deadline = time.monotonic() + 120
    while (current := manager.current) is None or not current.ready:
        assert time.monotonic() < deadline, "the past-cap scan process never became ready"
        assert current is None or not current.dead, current.refused
        time.sleep(0.05)
    return current


def start(start_proxy, policy_file, upstream: LoggingUpstream, manager: worker._Manager):  # type: ignore[no-untyped-def]
    proxy = start_proxy(policy_file(POLICY), sets=SETS, upstream_ca=upstream.ca_path)
    # A first big upload starts the scan process (its batches go to the in-process thread meanwhile).
    with proxied_client(proxy) as client:
        assert client.post(f"{upstream.url}/warm", content=b"w" * (2 * CAP)).status_code == 200
    return proxy, wait_for_child(manager)


def event_for(tape: Path, path: str) -> dict[str, Any]:
    [event] = [e for e in network_events(read_tape(tape)) if e.get("path") == path]
    return event


def assert_found_and_masked(
    event: dict[str, Any], where: str, offset: int, size: int, tape: Path, secret: str
):  # type: ignore[no-untyped-def]
    hits = {h["location"]: h for h in event["dlp"]["hits"]}
    assert hits[f"{where}@{offset}"]["rule"] == "github-pat"
    assert (
        hits[f"{where}@{offset}"]["preview"].startswith("ghp_")
        and "…" in hits[f"{where}@{offset}"]["preview"]
    )
    [coverage] = [c for c in event["dlp"]["past_cap"] if c["where"] == where]
    assert coverage == {"where": where, "from_byte": CAP, "to_byte": size, "complete": True, "note": None}
    assert secret.encode() not in tape_bytes(tape)


def test_a_secret_past_the_cap_of_a_sized_and_of_a_chunked_binary_upload_is_found_in_the_process(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path, manager
) -> None:
    proxy, child = start(start_proxy, policy_file, logging_upstream, manager)
    secret = github_token()
    size, at = 3 * MIB + 12_345, 2 * MIB + 777
    body = binary_body(size, secret.encode(), at, b"upload")
    scanned = child.scanned
    with proxied_client(proxy) as client:
        sized = client.post(f"{logging_upstream.url}/sized", content=body)
        chunked = client.post(f"{logging_upstream.url}/chunked", content=pieces(body))
    assert sized.status_code == chunked.status_code == 200  # traffic untouched
    assert len(logging_upstream.received_bytes()) > 2 * size
    proxy.flush()
    # Every batch of both bodies was scanned by the child (3 MiB past the cap each: 3-4 batches).
    assert child.scanned - scanned >= 6 and not child.dead
    proxy.stop()
    assert child.process.returncode == 0  # it ends with the proxy (never lost)
    tape = tmp_path / "tape"
    for path in ("/sized", "/chunked"):
        event = event_for(tape, path)
        assert event["request"]["body"]["truncated"] is True
        assert event["request"]["body"]["size"] == size
        assert event["request"]["body"]["sha256"] == hashlib.sha256(body).hexdigest()
        assert_found_and_masked(event, "request.body", at, size, tape, secret)


class CloseDelimited:
    """A plain-HTTP upstream that answers with a body of unknown length: no Content-Length, not
    chunked, ended by closing the connection."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data and (more := conn.recv(65536)):
                    data += more
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
                conn.sendall(self.body)

    def close(self) -> None:
        self.sock.close()


def test_a_secret_past_the_cap_of_a_download_of_unknown_length_is_found_in_the_process(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path, manager
) -> None:
    proxy, child = start(start_proxy, policy_file, logging_upstream, manager)
    secret = github_token()
    size, at = 3 * MIB + 99, 3 * MIB - 200  # in the last, short batch
    body = binary_body(size, secret.encode(), at, b"download")
    upstream = CloseDelimited(body)
    scanned = child.scanned
    try:
        with proxied_client(proxy) as client:
            got = client.get(f"http://127.0.0.1:{upstream.port}/model.bin")
    finally:
        upstream.close()
    assert got.status_code == 200 and got.content == body and "content-length" not in got.headers
    proxy.flush()
    assert child.scanned - scanned >= 3 and not child.dead
    proxy.stop()
    assert child.process.returncode == 0  # it ends with the proxy (never lost)
    event = event_for(tmp_path / "tape", "/model.bin")
    assert event["response"]["body"]["size"] == size
    assert_found_and_masked(event, "response.body", at, size, tmp_path / "tape", secret)


def test_the_scan_process_killed_mid_upload_the_upload_passes_and_the_tape_says_so(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path, manager
) -> None:
    proxy, child = start(start_proxy, policy_file, logging_upstream, manager)
    secret = github_token()
    size = 4 * MIB
    body = binary_body(size, secret.encode(), 3 * MIB + 5, b"killed")
    sent = 0

    def killing_midway() -> Iterator[bytes]:
        nonlocal sent
        for piece in pieces(body):
            if sent == MIB:
                os.kill(child.pid, signal.SIGSTOP)  # from here on, a batch handed to it stays in its hands
            if sent == 3 * MIB:
                deadline = time.monotonic() + 60
                while not child.in_flight:
                    assert time.monotonic() < deadline, "no batch reached the stopped scan process"
                    time.sleep(0.01)
                os.kill(child.pid, signal.SIGKILL)
            sent += len(piece)
            yield piece

    with proxied_client(proxy) as client:
        response = client.post(f"{logging_upstream.url}/killed", content=killing_midway())
        assert response.status_code == 200  # fail-open: the upload passed whole
        # Traffic goes on, and the next upload's secret is found (by the thread, then a new child).
        after = binary_body(2 * MIB, secret.encode(), MIB + 3, b"after")
        assert client.post(f"{logging_upstream.url}/after", content=after).status_code == 200
    proxy.stop()
    assert child.dead and child.process.returncode == -signal.SIGKILL
    tape = tmp_path / "tape"
    event = event_for(tape, "/killed")
    assert event["request"]["body"]["size"] == size
    assert event["request"]["body"]["sha256"] == hashlib.sha256(body).hexdigest()
    [coverage] = event["dlp"]["past_cap"]
    assert coverage["complete"] is False
    assert coverage["note"].startswith(f"scan process lost (exit {-signal.SIGKILL}): bytes ")
    assert_found_and_masked(event_for(tape, "/after"), "request.body", MIB + 3, 2 * MIB, tape, secret)
