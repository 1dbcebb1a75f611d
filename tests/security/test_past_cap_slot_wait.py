"""Attack on the past-cap scan's slot queue (failcore.evidence.pastcap._Worker): stall the scan process
(SIGSTOP: an agent of the same user can send it) during a big binary upload so every slot fills, hide a
secret in the megabytes that follow, and hope the batches that find no slot go unscanned, or that the
tape says the body was scanned whole when it was not, or holds the secret in clear.

Through the real proxy: what the upstream received and what the tape holds.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import failcore.evidence.pastcap as pastcap
import failcore.evidence.pastcapworker as worker
from tests.helpers import github_token, network_events, proxied_client, read_tape
from tests.security.helpers import tape_bytes
from tests.security.upstream import LoggingUpstream

POLICY = "version: 1\nmode: observe\ndefault: ALLOW\n"
CAP = 65_536
MIB = 1 << 20


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[worker._Manager]:
    fresh = worker._Manager()
    monkeypatch.setattr(worker, "_manager", fresh)
    yield fresh
    fresh.close()


def test_batches_with_no_free_slot_wait_for_the_stalled_scan_process_and_are_scanned_by_it(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path, manager, monkeypatch
) -> None:
    monkeypatch.setattr(pastcap, "GRACE_SECONDS", 60.0, raising=False)
    monkeypatch.setattr(pastcap, "_the_worker", None)  # a fresh worker (and slot hook) for this proxy
    monkeypatch.setattr(worker, "_slot_freed", getattr(worker, "_slot_freed", None), raising=False)
    handed: list[int] = []
    scanned_here: list[int] = []
    submit, scan_now = pastcap._Worker.submit, pastcap.PastCapScan.scan_now

    def counting_submit(self, scan, buffer, base):  # type: ignore[no-untyped-def]
        handed.append(base)
        return submit(self, scan, buffer, base)

    def counting_scan(self, buffer, base):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "failcore-dlp-past-cap":
            scanned_here.append(base)
        scan_now(self, buffer, base)

    monkeypatch.setattr(pastcap._Worker, "submit", counting_submit)
    monkeypatch.setattr(pastcap.PastCapScan, "scan_now", counting_scan)
    proxy = start_proxy(
        policy_file(POLICY),
        sets=[f"failcore_body_cap={CAP}", f"failcore_stream_threshold={CAP}"],
        upstream_ca=logging_upstream.ca_path,
    )
    with proxied_client(proxy) as client:  # starts the scan process
        assert client.post(f"{logging_upstream.url}/warm", content=b"w" * (2 * CAP)).status_code == 200
    deadline = time.monotonic() + 120
    while (child := manager.current) is None or not child.ready:
        assert time.monotonic() < deadline and (child is None or not child.dead)
        time.sleep(0.05)
    secret = github_token()
    size = CAP + (worker.SLOTS + 4) * MIB
    at = size - MIB - 4321  # in a batch handed over after every slot was taken
    body = bytearray(hashlib.shake_256(b"stalled").digest(size))
    body[at - 1 : at + len(secret) + 1] = b" " + secret.encode() + b" "
    body = bytes(body)
    handed.clear()
    scanned_here.clear()
    scanned = child.scanned

    def stalling() -> Iterator[bytes]:
        os.kill(child.pid, signal.SIGSTOP)
        try:
            for i in range(0, size, 64 * 1024):
                if i == size - 2 * MIB:  # every slot taken and batches waiting: let it go on
                    deadline = time.monotonic() + 60
                    while len(handed) < 2:
                        assert time.monotonic() < deadline, "no batch found every slot taken"
                        time.sleep(0.01)
                    assert len(child.in_flight) == worker.SLOTS
                    os.kill(child.pid, signal.SIGCONT)
                yield body[i : i + 64 * 1024]
        finally:
            os.kill(child.pid, signal.SIGCONT)

    with proxied_client(proxy) as client:
        response = client.post(f"{logging_upstream.url}/stalled", content=stalling())
    assert response.status_code == 200
    assert logging_upstream.received_bytes().count(body[-4096:]) == 1  # the upload passed whole
    proxy.stop()
    assert child.process.returncode == 0
    # The batches that found no slot waited for the child: the proxy scanned none of them itself.
    assert handed and scanned_here == []
    assert child.scanned - scanned >= worker.SLOTS + 4
    tape = tmp_path / "tape"
    [event] = [e for e in network_events(read_tape(tape)) if e.get("path") == "/stalled"]
    assert event["request"]["body"]["size"] == size
    assert event["request"]["body"]["sha256"] == hashlib.sha256(body).hexdigest()
    hits = {h["location"]: h for h in event["dlp"]["hits"]}
    assert hits[f"request.body@{at}"]["rule"] == "github-pat"
    assert "…" in hits[f"request.body@{at}"]["preview"]
    [coverage] = event["dlp"]["past_cap"]
    assert coverage == {
        "where": "request.body",
        "from_byte": CAP,
        "to_byte": size,
        "complete": True,
        "note": None,
    }
    assert secret.encode() not in tape_bytes(tape)
