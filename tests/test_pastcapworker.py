"""The past-cap scan process (failcore.evidence.pastcapworker): the same hits as the in-process scan,
from shared memory that no batch outlives; bounded; a child stopped, killed or refusing the policy
never loses a batch silently."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import failcore.evidence.pastcap as pastcap
import failcore.evidence.pastcapworker as worker
from failcore.dlp.scanner import DlpScanner
from failcore.evidence.pastcap import BATCH_BYTES, PastCapScan
from failcore.evidence.scanworker import ScanOrigin
from failcore.policy.load import load_policy
from failcore.shipped import default_policy_path

SALT = b"0123456789abcdef"
SECRET = b"ghp_" + b"Z9y8X7w6V5u4" * 3
AWS_KEY = b"AKIA" + b"IOSFODNN7" + b"EXAMPLQ"
CAP = 65_536


def random_bytes(size: int, seed: bytes = b"past-cap") -> bytes:
    return hashlib.shake_256(seed).digest(size)


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[worker._Manager]:
    fresh = worker._Manager()
    monkeypatch.setattr(worker, "_manager", fresh)
    monkeypatch.setattr(worker, "RESTART_INTERVAL", 0.0)
    yield fresh
    fresh.close()


@pytest.fixture(scope="module")
def policy_scanner() -> tuple[ScanOrigin, DlpScanner]:
    path = default_policy_path()
    policy = load_policy(path)
    scanner = DlpScanner.for_policy(policy, SALT)
    assert scanner is not None
    origin = worker.origin_for(policy, SALT)
    assert origin is not None
    return origin, scanner


def ready_process(origin: ScanOrigin) -> worker.ScanProcess:
    deadline = time.monotonic() + 120
    while (process := worker.scan_process(origin)) is None:
        assert time.monotonic() < deadline, "the past-cap scan process never became ready"
        time.sleep(0.05)
    return process


def no_thread(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The in-process worker thread records its use instead of scanning."""
    used: list[int] = []

    class Refuses:
        def submit(self, scan, buffer, base):  # type: ignore[no-untyped-def]
            used.append(base)
            return False

    monkeypatch.setattr(pastcap, "_worker", lambda: Refuses())
    return used


def feed(scan: PastCapScan, body: bytes, size: int = 65_536) -> None:
    for i in range(0, len(body), size):
        scan(body[i : i + size])


def summary(scan: PastCapScan) -> tuple[list[tuple[int, str, str, str]], dict]:
    hits, coverage = scan.results(timeout=30)
    return [(o, h.rule_id, h.preview, h.fingerprint) for o, h in hits], coverage


@pytest.mark.parametrize("kind", ["binary", "text"])
def test_the_process_finds_exactly_what_the_in_process_scan_finds(
    manager, policy_scanner, monkeypatch, kind
) -> None:
    origin, scanner = policy_scanner
    process = ready_process(origin)
    used = no_thread(monkeypatch)
    if kind == "binary":
        filler = random_bytes(4 * BATCH_BYTES)
    else:
        filler = (b'{"id": 12345, "text": "lorem ipsum dolor sit amet"}\n' * 90_000)[: 4 * BATCH_BYTES]
    # One secret straddles the cap, one a batch boundary (with the cap's overlap), one is at the end.
    at = [CAP - 10, CAP + BATCH_BYTES - 6, len(filler) - 100]
    body = bytearray(filler)
    for offset, secret in zip(at, (SECRET, AWS_KEY, SECRET), strict=True):
        body[offset - 1 : offset + len(secret) + 1] = b" " + secret + b" "
    body = bytes(body)
    for chunk in (1000, 65_536, 3 * BATCH_BYTES):  # a chunk bigger than a slot is split, not refused
        scan = PastCapScan(scanner.engine, CAP, "request.body", origin=origin)
        reference = PastCapScan(scanner.engine, CAP, "request.body", inline=True)
        before = process.scanned
        feed(scan, body, chunk)
        feed(reference, body, chunk)
        found, coverage = summary(scan)
        assert found == summary(reference)[0]
        assert [(o, rule) for o, rule, _, _ in found] == [
            (at[0], "github-pat"),
            (at[1], "aws-access-key-id"),
            (at[2], "github-pat"),
        ]
        assert coverage["complete"] is True and coverage["to_byte"] == len(body)
        assert process.scanned - before >= 4  # every batch, the last one too, went to the child
    assert used == []
    # A batch does not outlive its scan: the child zeroes its slot before it answers.
    assert process.memory[:] == bytes(len(process.memory))


def test_the_child_holds_no_socket_and_its_memory_has_no_name_on_disk(manager, policy_scanner) -> None:
    origin, _ = policy_scanner
    process = ready_process(origin)
    links = [os.readlink(fd) for fd in Path(f"/proc/{process.pid}/fd").iterdir()]
    assert not [link for link in links if link.startswith("socket:")], links
    shared = [link for link in links if "failcore-past-cap" in link]
    assert shared and all(link.startswith("/memfd:") for link in shared), links
    # failcore's own module, never one from the working directory (-P: see failcore.spawn).
    assert Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")[1:4] == [
        b"-P",
        b"-m",
        b"failcore.evidence.pastcapworker",
    ]


def test_with_every_slot_taken_the_worker_thread_takes_the_rest(manager, policy_scanner) -> None:
    origin, scanner = policy_scanner
    process = ready_process(origin)
    extra = 3
    body = bytearray(random_bytes(CAP + (worker.SLOTS + extra) * BATCH_BYTES))
    at = len(body) - BATCH_BYTES // 2  # in a batch the child has no slot for
    body[at - 1 : at + len(SECRET) + 1] = b" " + SECRET + b" "
    os.kill(process.pid, signal.SIGSTOP)  # a child that does not keep up
    try:
        scan = PastCapScan(scanner.engine, CAP, "request.body", origin=origin)
        feed(scan, bytes(body))
        assert len(process.in_flight) == worker.SLOTS and scan.note is None
    finally:
        os.kill(process.pid, signal.SIGCONT)
    found, coverage = summary(scan)
    assert [(o, rule) for o, rule, _, _ in found] == [(at, "github-pat")]
    assert coverage["complete"] is True


def test_with_every_slot_and_the_thread_queue_taken_the_scan_stops_and_says_so(
    manager, policy_scanner, monkeypatch
) -> None:
    origin, scanner = policy_scanner
    process = ready_process(origin)
    used = no_thread(monkeypatch)
    os.kill(process.pid, signal.SIGSTOP)
    try:
        scan = PastCapScan(scanner.engine, CAP, "request.body", origin=origin)
        feed(scan, random_bytes(CAP + (worker.SLOTS + 3) * BATCH_BYTES))
        assert scan.note is not None and scan.note.startswith("scan queue full: stopped scanning at byte ")
        assert len(process.in_flight) == worker.SLOTS and len(used) == 1
    finally:
        os.kill(process.pid, signal.SIGCONT)
    _, coverage = summary(scan)
    assert coverage["complete"] is False and coverage["note"].startswith("scan queue full")


def test_a_child_killed_holding_batches_says_which_bytes_were_not_scanned_and_is_replaced(
    manager, policy_scanner, monkeypatch
) -> None:
    origin, scanner = policy_scanner
    process = ready_process(origin)
    os.kill(process.pid, signal.SIGSTOP)
    scan = PastCapScan(scanner.engine, CAP, "response.body", origin=origin)
    feed(scan, random_bytes(CAP + 2 * BATCH_BYTES + 5))
    assert process.in_flight
    os.kill(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while scan.note is None:  # (the reader thread sees the end of its pipe)
        assert time.monotonic() < deadline, "the loss of the scan process was never noticed"
        time.sleep(0.01)
    assert process.dead and process.memory[:] == bytes(len(process.memory))  # its slots zeroed
    found, coverage = summary(scan)
    assert coverage["complete"] is False
    assert coverage["note"].startswith("scan process lost (exit -9): bytes ")
    # The next body is scanned whole: by the worker thread until a new child is ready, then by it.
    body = bytearray(random_bytes(CAP + 3 * BATCH_BYTES, b"next"))
    body[CAP + 100 : CAP + 102 + len(SECRET)] = b" " + SECRET + b" "
    after = PastCapScan(scanner.engine, CAP, "request.body", origin=origin)
    feed(after, bytes(body))
    found, coverage = summary(after)
    assert [(o, rule) for o, rule, _, _ in found] == [(CAP + 101, "github-pat")]
    assert coverage["complete"] is True
    replacement = ready_process(origin)
    assert replacement is not process and replacement.pid != process.pid
    assert manager.losses == 1


def test_a_stopped_child_is_given_up_on_and_replaced(manager, policy_scanner) -> None:
    """SIGSTOP (an agent of the same user can send it): the child never answers and never dies. The
    body waiting on it says its bytes were not scanned, the child is killed, and the next body does
    not wait on it again (found in review: every later body waited its whole timeout)."""
    origin, scanner = policy_scanner
    process = ready_process(origin)
    os.kill(process.pid, signal.SIGSTOP)
    scan = PastCapScan(scanner.engine, CAP, "request.body", origin=origin)
    feed(scan, random_bytes(CAP + 2 * BATCH_BYTES + 5))
    assert process.in_flight
    found, coverage = scan.results(timeout=1.0)
    assert coverage["complete"] is False and "not scanned" in coverage["note"], coverage
    assert process.dead and process.process.returncode == -signal.SIGKILL
    replacement = ready_process(origin)
    assert replacement is not process
    body = bytearray(random_bytes(CAP + 2 * BATCH_BYTES, b"after"))
    body[CAP + 100 : CAP + 102 + len(SECRET)] = b" " + SECRET + b" "
    after = PastCapScan(scanner.engine, CAP, "request.body", origin=origin)
    feed(after, bytes(body))
    found, coverage = summary(after)
    assert [(o, rule) for o, rule, _, _ in found] == [(CAP + 101, "github-pat")]
    assert coverage["complete"] is True


def test_a_policy_file_changed_since_the_proxy_loaded_it_is_scanned_in_process(
    manager, tmp_path, monkeypatch
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nmode: observe\ndefault: ALLOW\n")
    policy = load_policy(path)
    scanner = DlpScanner.for_policy(policy, SALT)
    assert scanner is not None
    origin = worker.origin_for(policy, SALT)
    # Edited after the proxy loaded it: the child must not scan with rules the proxy does not use.
    path.write_text("version: 1\nmode: observe\ndefault: ALLOW\ndlp:\n  enabled: false\n")
    assert worker.scan_process(origin) is None  # starting
    deadline = time.monotonic() + 120
    while manager.current is not None and not manager.current.dead:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert manager.current is not None and "changed" in (manager.current.refused or "")
    assert worker.scan_process(origin) is None and origin in manager.refused
    body = random_bytes(CAP + BATCH_BYTES) + b" " + SECRET + b" "
    scan = PastCapScan(scanner.engine, CAP, "request.body", origin=origin)
    feed(scan, body)
    found, coverage = summary(scan)
    assert [rule for _, rule, _, _ in found] == ["github-pat"] and coverage["complete"] is True


def test_an_imported_rule_file_changed_since_the_proxy_loaded_it_is_scanned_in_process(
    manager, tmp_path
) -> None:
    """The child re-reads what the policy imports (`import_gitleaks`), which the policy file's digest
    does not cover: an edit of the imported file (an agent can reach it) made the child scan with
    rules that miss what the proxy's own rules find, and the body was recorded as scanned whole
    (found in review). The rule set's digest is now checked too."""
    rule = (
        "[[rules]]\nid = 'acme-token'\ndescription = 'ACME'\n"
        "regex = 'acme_[a-z0-9]{24}'\nkeywords = ['acme_']\n"
    )
    toml = tmp_path / "rules.toml"
    toml.write_text(rule)
    path = tmp_path / "policy.yaml"
    path.write_text(f"version: 1\nmode: observe\ndefault: ALLOW\ndlp:\n  import_gitleaks: {toml}\n")
    policy = load_policy(path)
    scanner = DlpScanner.for_policy(policy, SALT)
    assert scanner is not None
    origin = worker.origin_for(policy, SALT)
    toml.write_text(rule.replace("acme_[a-z0-9]{24}", "acme_NEVER[a-z0-9]{24}"))
    assert worker.scan_process(origin) is None  # starting
    deadline = time.monotonic() + 120
    while manager.current is not None and not manager.current.dead:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert manager.current is not None and "imports changed" in (manager.current.refused or "")
    token = b"acme_" + b"k3y" * 8
    body = random_bytes(CAP + BATCH_BYTES) + b" " + token + b" "
    scan = PastCapScan(scanner.engine, CAP, "request.body", origin=origin)
    feed(scan, body)
    found, coverage = summary(scan)
    assert [rule for _, rule, _, _ in found] == ["acme-token"] and coverage["complete"] is True


def test_bodies_interleaved_through_the_same_slots_keep_their_own_hits(
    manager, policy_scanner, monkeypatch
) -> None:
    origin, scanner = policy_scanner
    process = ready_process(origin)
    used = no_thread(monkeypatch)
    bodies, scans, expected = [], [], []
    for n in range(3):
        body = bytearray(random_bytes(CAP + 3 * BATCH_BYTES, b"body %d" % n))
        at = CAP + (n + 1) * 300_000
        secret = SECRET if n != 1 else AWS_KEY
        body[at - 1 : at + len(secret) + 1] = b" " + secret + b" "
        bodies.append(bytes(body))
        scans.append(PastCapScan(scanner.engine, CAP, "request.body", origin=origin))
        expected.append([(at, "github-pat" if n != 1 else "aws-access-key-id")])
    for i in range(0, len(bodies[0]), 50_000):  # three streams at once, chunk by chunk
        for scan, body in zip(scans, bodies, strict=True):
            scan(body[i : i + 50_000])
    for scan, want in zip(scans, expected, strict=True):
        found, coverage = summary(scan)
        assert [(o, rule) for o, rule, _, _ in found] == want and coverage["complete"] is True
    assert used == [] and not process.in_flight and len(process.free) == worker.SLOTS


def test_a_failing_scan_process_never_breaks_the_stream(policy_scanner, monkeypatch) -> None:
    origin, scanner = policy_scanner

    def broken(_origin):  # type: ignore[no-untyped-def]
        raise RuntimeError("no shared memory here")

    monkeypatch.setattr(worker, "scan_process", broken)
    body = random_bytes(CAP + 2 * BATCH_BYTES + 1000) + b" " + SECRET + b" "
    scan = PastCapScan(scanner.engine, CAP, "request.body", origin=origin)
    feed(scan, body)  # raises nothing: the worker thread scans instead
    found, coverage = summary(scan)
    assert [(o, rule) for o, rule, _, _ in found] == [(len(body) - len(SECRET) - 1, "github-pat")]
    assert coverage["complete"] is True


def test_a_policys_origin_is_digested_once_per_load_not_per_streamed_body(tmp_path, monkeypatch) -> None:
    """DlpGuard asks for the origin at every streamed body's headers: digesting the policy's ~100 rules
    each time cost the event loop ~0.5 ms per streamed LLM answer (benchmarks/llm_exchange_cost.py).
    Once per policy load and salt; a reloaded policy (a new object) is digested again."""
    import failcore.dlp.rules as rules

    built: list[object] = []
    real = rules.policy_rules
    monkeypatch.setattr(rules, "policy_rules", lambda policy: built.append(policy) or real(policy))
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nmode: observe\ndefault: ALLOW\n")
    policy = load_policy(path)
    first = worker.origin_for(policy, SALT)
    assert first is not None and first.rules_sha256
    assert [worker.origin_for(policy, SALT) for _ in range(3)] == [first] * 3
    assert len(built) == 1
    other_salt = worker.origin_for(policy, b"another-salt-0000")
    assert other_salt is not None and other_salt.salt == b"another-salt-0000" and len(built) == 2
    path.write_text("version: 1\nmode: observe\ndefault: ALLOW  # edited\n")
    reloaded = load_policy(path)
    again = worker.origin_for(reloaded, SALT)
    assert again is not None and again.policy_sha256 == reloaded.sha256 != policy.sha256
    assert len(built) == 3
