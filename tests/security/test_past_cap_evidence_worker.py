"""An exchange whose body streamed past the recorded cap now has its DLP evidence pass (the recorded
part's scan, the past-cap hits placed in the event) run by the DLP evidence worker, with the past-cap
results sent as plain data. Attacks: a secret in the recorded part, one straddling the cap and one past
it, hoping the worker masks less than the proxy did; kill the worker holding the batch and hope the
event reaches the tape unmasked or goes unrecorded.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import fcntl
import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest

from failcore.evidence.body import body_evidence
from failcore.evidence.dlp import scan_event
from failcore.evidence.findings import PastCapFindings
from failcore.evidence.pastcap import PastCapScan
from failcore.evidence.scanworker import BuildFirst, DeferredScan, ScanOffload
from tests.helpers import github_token, network_events, proxied_client, read_tape
from tests.security.evidence_helpers import POLICY, PROXY_CAP, SETS
from tests.security.evidence_helpers import event_with_secrets as _event
from tests.security.evidence_helpers import offload_until_ready as _offload_until_ready
from tests.security.evidence_helpers import origin_and_scanner as _origin_and_scanner
from tests.security.helpers import tape_bytes
from tests.security.upstream import LoggingUpstream

CAP = 16 * 1024  # small: the event's frame fits a pipe's buffer, so a stopped child cannot block it
SIZE = 300 * 1024


def _secrets() -> dict[str, tuple[int, str]]:
    """Where each secret starts: in the recorded part, straddling the cap, past it."""
    return {
        "recorded": (5_000, github_token()),
        "straddling": (CAP - 10, github_token()),
        "past": (200_000, github_token()),
    }


def _body(placed: dict[str, tuple[int, str]]) -> bytes:
    body = bytearray(hashlib.shake_256(b"past-cap evidence").digest(SIZE))
    for at, secret in placed.values():
        body[at - 1 : at + len(secret) + 1] = b" " + secret.encode() + b" "
    return bytes(body)


def _upload_event(body: bytes, scanner) -> tuple[dict[str, object], PastCapScan]:  # type: ignore[no-untyped-def]
    """The event of a binary upload of `body` as the proxy builds it before its DLP pass, and the
    past-cap scan of the body's stream (run by the in-process worker thread)."""
    event = _event("upload")
    event["path"] = "/upload"
    event["request"]["headers"] = [["content-type", "application/octet-stream"]]  # type: ignore[index]
    event["request"]["body"] = body_evidence(  # type: ignore[index]
        body[:CAP],
        complete=False,
        wire_size=len(body),
        content_encoding=None,
        content_type="application/octet-stream",
        cap=CAP,
    )
    scan = PastCapScan(scanner.engine, CAP, "request.body")
    for i in range(0, len(body), 7_000):
        scan(body[i : i + 7_000])
    return event, scan


def _assert_masked(event: dict[str, object], placed: dict[str, tuple[int, str]]) -> None:
    raw = orjson.dumps(event)
    recorded = base64.b64decode(event["request"]["body"]["b64"])  # type: ignore[index]
    for at, secret in placed.values():
        assert secret.encode() not in raw
        assert secret.encode()[:10] not in recorded  # the straddling one's start is masked too
        assert at < CAP or f"request.body@{at}" in {h["location"] for h in event["dlp"]["hits"]}  # type: ignore[index]
    assert event["dlp"]["past_cap"] == [  # type: ignore[index]
        {"where": "request.body", "from_byte": CAP, "to_byte": SIZE, "complete": True, "note": None}
    ]


@pytest.mark.parametrize("kind", ["binary", "text"])
def test_a_secret_straddling_the_cap_is_masked_in_the_recorded_part_after_a_secret_before_it(
    kind: str,
) -> None:
    """The recorded part's own secret is masked first, which shortens it (a mask is shorter than the
    secret): the straddling secret's start, located by its offset, was then left in clear."""
    _, scanner = _origin_and_scanner()
    placed = _secrets()
    body = _body(placed)
    if kind == "text":
        body = bytes(b if 0x20 <= b < 0x7F and b != 0x22 and b != 0x5C else 0x61 for b in body)
    event, scan = _upload_event(body, scanner)
    if kind == "text":
        event["request"]["body"] = body_evidence(  # type: ignore[index]
            body[:CAP],
            complete=False,
            wire_size=len(body),
            content_encoding=None,
            content_type="text/plain",
            cap=CAP,
        )
    scan_event(scanner, event, [scan])
    recorded = event["request"]["body"]  # type: ignore[index]
    recorded = base64.b64decode(recorded["b64"]) if kind == "binary" else recorded["text"].encode()
    for _, secret in placed.values():
        assert secret.encode() not in orjson.dumps(event)
        assert secret.encode()[:8] not in recorded
    assert event["request"]["body"]["dlp_masked"] == 2  # type: ignore[index]


def test_the_worker_masks_a_past_cap_exchange_exactly_as_the_in_process_pass() -> None:
    origin, scanner = _origin_and_scanner()
    placed = _secrets()
    event, scan = _upload_event(_body(placed), scanner)
    # Before this change: the whole pass in the proxy, with the PastCapScan itself.
    expected = copy.deepcopy(event)
    scan_event(scanner, expected, [scan])
    _assert_masked(expected, placed)
    findings = scan.findings()
    assert PastCapFindings.from_wire(orjson.loads(orjson.dumps(findings.to_wire()))) == findings
    # In-process fallback (the writer calls the DeferredScan): identical.
    assert DeferredScan(copy.deepcopy(event), scanner, origin, (findings,))() == expected
    offload = ScanOffload("run-test")
    try:
        _offload_until_ready(offload, DeferredScan(_event("warm"), scanner, origin))
        handed = offload.offloaded
        # As the recorder submits it: built in the writer's thread, then handed over.
        item = BuildFirst(lambda: DeferredScan(copy.deepcopy(event), scanner, origin, (findings,)))
        (scanned,) = offload([item])
        assert offload.offloaded == handed + 1  # the child did it
        assert scanned == orjson.loads(orjson.dumps(expected))
    finally:
        offload.close()


def test_malformed_past_cap_findings_are_refused() -> None:
    good = [
        "request.body",
        CAP,
        [[CAP + 5, "github-pat", "high", "credential", 0, 40, "ghp_…", "f", None]],
        {},
        True,
    ]
    assert PastCapFindings.from_wire(good).found[0][0] == CAP + 5
    assert PastCapFindings.from_wire(good).masked is True
    for bad in (
        ["request.body", CAP, [[CAP + 5, "github-pat"]], {}, False],
        ["request.body", "1", [], {}, False],
        ["request.body", CAP, [["1", "r", "s", "c", 0, 1, "p", "f", None]], {}, False],
        ["request.body", CAP, [], {}, 1],
        good[:4],
        {"where": "request.body"},
    ):
        with pytest.raises(ValueError):
            PastCapFindings.from_wire(bad)


def test_a_worker_killed_holding_a_past_cap_exchange_is_recorded_and_the_proxy_masks_it() -> None:
    origin, scanner = _origin_and_scanner()
    placed = _secrets()
    event, scan = _upload_event(_body(placed), scanner)
    findings = scan.findings()
    expected = copy.deepcopy(event)
    scan_event(scanner, expected, [scan])
    offload = ScanOffload("run-test")
    try:
        _offload_until_ready(offload, DeferredScan(_event("warm"), scanner, origin))
        assert offload.worker is not None
        pid = offload.worker.pid
        # Stopped, it takes the batch's frame (into its pipe) but never answers; killed while the
        # proxy waits for that answer.
        os.kill(pid, signal.SIGSTOP)
        killer = threading.Timer(0.5, os.kill, (pid, signal.SIGKILL))
        killer.start()
        started = time.monotonic()
        batch = [
            DeferredScan(copy.deepcopy(event), scanner, origin, (findings,)),
            DeferredScan(_event("n"), scanner, origin),
        ]
        out = offload(batch)
        killer.join()
        assert time.monotonic() - started >= 0.4  # it was waiting for the child's answer
        lost, left, other = out
        assert lost["kind"] == "internal_error" and lost["detail"]["where"] == "evidence worker"  # type: ignore[index]
        assert lost["detail"]["exit_code"] == -signal.SIGKILL  # type: ignore[index]
        assert offload.deaths == 1
        assert other is batch[1]  # the rest of the batch too
        # Nothing was taken from the child: the writer runs the pass itself, with the same results.
        assert isinstance(left, DeferredScan) and left.past_cap == (findings,)
        assert left() == expected
        _assert_masked(left.event, placed)
    finally:
        offload.close()


def test_a_past_cap_upload_is_masked_by_the_worker_and_the_scan_process_ends_with_the_proxy(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path, manager
) -> None:
    """Through the real proxy: the upload's DLP pass is handed to the evidence worker, the tape holds
    every secret masked (recorded part, across the cap, past it), and stopping the proxy ends the
    past-cap scan process it started (embedded, it outlived the proxy)."""
    proxy = start_proxy(policy_file(POLICY), sets=SETS, upstream_ca=logging_upstream.ca_path)
    recorder = proxy.proxy.master.addons.get("failcore").recorder  # type: ignore[union-attr]
    deadline = time.monotonic() + 120
    while not proxy.call(lambda: recorder.offload.worker.poll_ready()):
        assert time.monotonic() < deadline, "the evidence worker never became ready"
        time.sleep(0.1)
    size = 3 * (1 << 20) + 777
    placed = {
        "recorded": (9_000, github_token()),
        "straddling": (PROXY_CAP - 12, github_token()),
        "past": (2 * (1 << 20) + 3, github_token()),
    }
    body = bytearray(hashlib.shake_256(b"through the proxy").digest(size))
    for at, secret in placed.values():
        body[at - 1 : at + len(secret) + 1] = b" " + secret.encode() + b" "
    handed = proxy.call(lambda: recorder.offload.offloaded)
    with proxied_client(proxy) as client:
        assert client.post(f"{logging_upstream.url}/upload", content=bytes(body)).status_code == 200
    proxy.flush()
    assert proxy.call(lambda: recorder.offload.offloaded) > handed
    child = manager.current
    assert child is not None and child.process.poll() is None  # the past-cap scan process ran
    proxy.stop()
    assert child.process.poll() is not None and manager.current is None
    tape = tmp_path / "tape"
    [event] = [e for e in network_events(read_tape(tape)) if e["path"] == "/upload"]
    assert event["dlp"]["engine"] == "hyperscan"
    locations = {h["location"] for h in event["dlp"]["hits"]}
    assert f"request.body@{placed['past'][0]}" in locations
    assert f"request.body@{placed['straddling'][0]}" in locations
    assert event["dlp"]["past_cap"] == [
        {"where": "request.body", "from_byte": PROXY_CAP, "to_byte": size, "complete": True, "note": None}
    ]
    recorded = base64.b64decode(event["request"]["body"]["b64"])
    raw = tape_bytes(tape)
    for _, secret in placed.values():
        assert secret.encode() not in raw and secret.encode()[:12] not in recorded
    assert bytes(body) == logging_upstream.received_bytes()[-size:]  # observe: it went out whole


def test_a_stopped_worker_cannot_block_the_writer_with_a_frame_larger_than_its_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A past-cap event with a 4 MiB recorded part is a ~5.6 MB frame, larger than a pipe's buffer (1
    MiB where failcore could widen it, failcore.evidence.workerpipe.widen_pipe): a stopped child never
    reads it, and the write blocked the tape writer with no time limit (only the
    reply's read had one). It now gives up, kills the child, records the loss and the writer masks
    the event itself."""
    import failcore.evidence.scanworker as scanworker

    cap = 4 << 20
    origin, scanner = _origin_and_scanner()
    token = github_token()
    body = bytearray(hashlib.shake_256(b"a frame larger than the pipe").digest(cap + 200_000))
    body[cap + 50_000 : cap + 50_000 + len(token)] = token.encode()
    event = _event("big")
    event["request"]["body"] = body_evidence(  # type: ignore[index]
        bytes(body[:cap]),
        complete=False,
        wire_size=len(body),
        content_encoding=None,
        content_type="application/octet-stream",
        cap=cap,
    )
    scan = PastCapScan(scanner.engine, cap, "request.body")
    for i in range(0, len(body), 65_536):
        scan(bytes(body[i : i + 65_536]))
    findings = scan.findings()
    expected = copy.deepcopy(event)
    scan_event(scanner, expected, [findings])
    offload = ScanOffload("run-test")
    hung = False
    pid = 0
    try:
        _offload_until_ready(offload, DeferredScan(_event("warm"), scanner, origin))
        assert offload.worker is not None
        pid = offload.worker.pid
        pipe_size = 1 << 16  # Linux's default; asked for below when the kernel says
        with contextlib.suppress(OSError):
            pipe_size = fcntl.fcntl(offload.worker.process.stdin.fileno(), 1032)  # type: ignore[union-attr]  # F_GETPIPE_SZ
        item = DeferredScan(copy.deepcopy(event), scanner, origin, (findings,))
        assert len(orjson.dumps(item.frame_item())) > 4 * pipe_size
        monkeypatch.setattr(scanworker, "REPLY_TIMEOUT", 1.0)
        os.kill(pid, signal.SIGSTOP)
        out: list[object] = []
        writer = threading.Thread(target=lambda: out.extend(offload([item])), daemon=True)
        writer.start()
        writer.join(60)  # a guard against a hang, not a measure of speed: it gives up after ~1 s
        hung = writer.is_alive()
    finally:
        if hung and pid:
            os.kill(pid, signal.SIGKILL)  # unblock the writer so the test ends
            writer.join()
        offload.close()
    assert not hung, "the tape writer was blocked by a stopped evidence worker"
    lost, left = out
    assert lost["kind"] == "internal_error" and lost["detail"]["where"] == "evidence worker"  # type: ignore[index]
    assert lost["detail"]["exit_code"] == -signal.SIGKILL  # type: ignore[index]
    assert "TimeoutError" in lost["error"]  # type: ignore[index]
    assert offload.deaths == 1
    assert isinstance(left, DeferredScan) and left() == expected
    assert token.encode() not in orjson.dumps(left.event)
