"""Tape writer and reader: chaining, rotation, restart, checkpoints, overload, disk errors, crashes."""

from __future__ import annotations

import errno
import itertools
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import orjson
import pytest

from failcore.tape import (
    TapeFormatError,
    TapeLine,
    follow,
    iter_events,
    iter_lines,
    list_segments,
    read_manifest,
    tape_head,
)
from failcore.tape.keys import load_or_create_signing_key, load_public_key, public_key_id
from failcore.tape.verify import verify_tape
from failcore.tape.writer import TapeLockedError, TapeWriter, encode_line
from tests.helpers import make_writer

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    return tmp_path / "conf"


@pytest.fixture
def signing_key(confdir: Path) -> Any:
    return load_or_create_signing_key(confdir)


@pytest.fixture
def tape_dir(tmp_path: Path) -> Path:
    return tmp_path / "tape"


def network_event(i: int, run: str = "run-1", **extra: Any) -> dict[str, Any]:
    return {"kind": "network", "run": run, "i": i, "path": f"/v1/items/{i}", **extra}


def all_events(tape_dir: Path) -> list[dict[str, Any]]:
    return list(iter_events(tape_dir))


def test_round_trip_writes_chained_lines_in_order(tape_dir: Path, signing_key: Any) -> None:
    writer = make_writer(tape_dir, signing_key)
    writer.start()
    for i in range(25):
        assert writer.submit(network_event(i))
    assert writer.flush()
    writer.close()

    events = all_events(tape_dir)
    user = [e for e in events if e["kind"] == "network"]
    assert [e["i"] for e in user] == list(range(25))
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["prev"] == "0" * 64
    for before, after in itertools.pairwise(events):
        assert after["prev"] == before["h"]
    assert events[-1]["kind"] == "checkpoint"
    assert writer.written == 25
    assert writer.dropped == 0
    assert writer.last_seq == events[-1]["seq"]
    assert tape_head(tape_dir) == (events[-1]["seq"], events[-1]["h"])


def test_line_layout_is_byte_exact(tape_dir: Path, signing_key: Any) -> None:
    with make_writer(tape_dir, signing_key) as writer:
        writer.submit({"kind": "network", "run": "run-1", "note": 'ünïcode \n and "quotes"'})
    first = next(iter_lines(tape_dir))
    assert first.complete
    body = orjson.dumps({"kind": "network", "run": "run-1", "note": 'ünïcode \n and "quotes"'})
    expected, digest = encode_line(b"0" * 64, 1, body)
    assert first.raw + b"\n" == expected
    assert first.raw[9:73] == b"0" * 64
    assert first.raw[-66:-2] == digest


def test_rotation_by_size_continues_chain_and_manifest_lists_segments(
    tape_dir: Path, signing_key: Any
) -> None:
    with make_writer(tape_dir, signing_key, segment_bytes=4096) as writer:
        for i in range(120):
            writer.submit(network_event(i, blob="z" * 150))

    segments = list_segments(tape_dir)
    assert len(segments) >= 4
    manifest = read_manifest(tape_dir)
    assert manifest is not None
    records = manifest["segments"]
    assert [r["name"] for r in records] == [p.name for p in segments]
    assert manifest["key_id"] == public_key_id(signing_key.public_key())
    for before, after in itertools.pairwise(records):
        assert after["first_seq"] == before["last_seq"] + 1
        assert after["first_prev"] == before["last_h"]
        assert before["closed"] is not None
    assert records[-1]["closed"] is not None

    for path in segments:  # every segment is sealed by a checkpoint
        last = orjson.loads(path.read_bytes().splitlines()[-1])
        assert last["kind"] == "checkpoint"

    events = all_events(tape_dir)
    assert [e["i"] for e in events if e["kind"] == "network"] == list(range(120))
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert verify_tape(tape_dir).ok


def test_rotation_by_age(tape_dir: Path, signing_key: Any) -> None:
    with make_writer(tape_dir, signing_key, segment_seconds=0.2) as writer:
        writer.submit(network_event(0))
        assert writer.flush()
        time.sleep(0.8)
        writer.submit(network_event(1))
    assert len(list_segments(tape_dir)) >= 2
    assert verify_tape(tape_dir).ok


def test_restart_continues_seq_and_chain_in_new_segment(tape_dir: Path, signing_key: Any) -> None:
    with make_writer(tape_dir, signing_key, run_id="first") as writer:
        for i in range(10):
            writer.submit(network_event(i, run="first"))
    head_seq, head_h = tape_head(tape_dir)

    with make_writer(tape_dir, signing_key, run_id="second") as writer:
        for i in range(10):
            writer.submit(network_event(i, run="second"))

    segments = list_segments(tape_dir)
    assert [p.name for p in segments] == ["seg-000001.jsonl", "seg-000002.jsonl"]
    first_of_second = orjson.loads(segments[1].read_bytes().splitlines()[0])
    assert first_of_second["seq"] == head_seq + 1
    assert first_of_second["prev"] == head_h
    assert [e["i"] for e in iter_events(tape_dir, run="second", kinds=["network"])] == list(range(10))
    report = verify_tape(tape_dir)
    assert report.ok, report.first_break
    assert report.segments == 2


def test_checkpoints_every_n_and_on_close_with_valid_signatures(tape_dir: Path, signing_key: Any) -> None:
    with make_writer(tape_dir, signing_key, checkpoint_every=10) as writer:
        for i in range(35):
            writer.submit(network_event(i))

    checkpoints = list(iter_events(tape_dir, kinds={"checkpoint"}))
    assert [c["count"] for c in checkpoints] == [10, 10, 10, 5]
    assert all(c["key_id"] == public_key_id(signing_key.public_key()) for c in checkpoints)
    assert all(c["run"] == "run-1" for c in checkpoints)
    first_line = next(line for line in iter_lines(tape_dir) if b'"kind":"checkpoint"' in line.raw)
    assert first_line.raw[first_line.raw.index(b'"seq":11,') + 9 :].startswith(b'"kind":"checkpoint"')

    report = verify_tape(tape_dir, public_key=signing_key.public_key())
    assert report.ok
    assert report.checkpoints == 4
    assert report.signatures_ok == 4
    assert report.unsigned_tail == 0
    assert report.key_source == "given"


def test_builder_exception_and_unserialisable_events_become_internal_errors(
    tape_dir: Path, signing_key: Any
) -> None:
    def exploding_builder() -> dict[str, Any]:
        raise KeyError("missing-field")

    with make_writer(tape_dir, signing_key) as writer:
        writer.submit(exploding_builder)
        writer.submit({"kind": "network", "run": "run-1", "obj": object()})
        writer.submit({"kind": "network", "seq": 99})
        writer.submit({"kind": "checkpoint", "sig": "forged"})
        writer.submit(lambda: network_event(7))
        writer.submit(lambda: "not a dict")  # type: ignore[arg-type, return-value]

    errors = list(iter_events(tape_dir, kinds=["internal_error"]))
    assert len(errors) == 5
    first = errors[0]
    assert first["fail_reason"] == "internal_error"
    assert first["run"] == "run-1"
    assert first["error"].startswith("KeyError: ")
    assert "missing-field" in first["error"]
    assert first["detail"] == {"where": "tape builder", "type": "KeyError"}
    assert {e["detail"]["where"] for e in errors[1:]} == {"tape serialise"}
    assert [e["i"] for e in iter_events(tape_dir, kinds=["network"])] == [7]
    assert writer.written == 6
    assert verify_tape(tape_dir).ok


def test_file_and_directory_modes(tape_dir: Path, signing_key: Any, confdir: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        with make_writer(tape_dir, signing_key) as writer:
            writer.submit(network_event(1))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(tape_dir.stat().st_mode) == 0o700
    for name in ("seg-000001.jsonl", "manifest.json", "signing-key.pub", ".lock"):
        assert stat.S_IMODE((tape_dir / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(confdir.stat().st_mode) == 0o700
    assert stat.S_IMODE((confdir / "failcore-signing.key").stat().st_mode) == 0o600
    assert (confdir / "failcore-signing.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_keys_are_stable_and_public_key_loads_in_both_forms(confdir: Path, tape_dir: Path) -> None:
    key = load_or_create_signing_key(confdir)
    again = load_or_create_signing_key(confdir)
    assert public_key_id(key.public_key()) == public_key_id(again.public_key())
    assert public_key_id(load_public_key(confdir / "failcore-signing.pub")) == public_key_id(key.public_key())
    from cryptography.hazmat.primitives import serialization

    pem_path = confdir / "pub.pem"
    pem_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert public_key_id(load_public_key(pem_path)) == public_key_id(key.public_key())
    bad = confdir / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(ValueError):
        load_public_key(bad)


def test_second_writer_on_same_directory_fails_naming_holder(tape_dir: Path, signing_key: Any) -> None:
    first = make_writer(tape_dir, signing_key)
    first.start()
    try:
        second = make_writer(tape_dir, signing_key)
        with pytest.raises(TapeLockedError, match=rf"pid {os.getpid()}\b"):
            second.start()
    finally:
        first.close()
    third = make_writer(tape_dir, signing_key)  # released on close
    third.start()
    third.close()


def test_close_is_idempotent_and_late_submits_count_as_dropped(tape_dir: Path, signing_key: Any) -> None:
    writer = make_writer(tape_dir, signing_key)
    writer.start()
    writer.submit(network_event(0))
    writer.close()
    writer.close()
    assert writer.submit(network_event(1)) is False
    assert writer.dropped == 1
    assert verify_tape(tape_dir).ok


class StuckDiskWriter(TapeWriter):
    """A disk that answers only once the test lets it (or after 30 s, so a bug fails instead of hanging)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.disk_back = threading.Event()

    def _write_bytes(self, data: bytes) -> None:
        self.disk_back.wait(30)
        super()._write_bytes(data)


def test_queue_full_never_blocks_counts_drops_and_writes_marker(tape_dir: Path, signing_key: Any) -> None:
    writer = make_writer(tape_dir, signing_key, StuckDiskWriter, queue_size=4)
    writer.start()
    accepted = sum(writer.submit(network_event(i)) for i in range(200))
    # All 200 submits returned while the disk had not yet written a line: none waited for it. (How long a
    # submit takes on a slow disk: benchmarks/bench_bounds.py.)
    assert writer.written == 0
    assert accepted < 200
    writer.disk_back.set()
    writer.close(timeout=30)

    assert writer.dropped > 0
    assert writer.dropped == 200 - accepted
    assert writer.written + writer.dropped == 200
    events = all_events(tape_dir)
    markers = [e for e in events if e["kind"] == "dropped"]
    assert markers
    assert sum(m["count"] for m in markers) == writer.dropped
    assert markers[-1]["total"] == writer.dropped
    assert len([e for e in events if e["kind"] == "network"]) == writer.written
    report = verify_tape(tape_dir)
    assert report.ok, report.first_break


class FlakyDiskWriter(TapeWriter):
    failing = False

    def _write_bytes(self, data: bytes) -> None:
        if self.failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        super()._write_bytes(data)


def test_disk_error_drops_events_marks_them_and_keeps_chain(tape_dir: Path, signing_key: Any) -> None:
    errors: list[str] = []
    writer = make_writer(tape_dir, signing_key, FlakyDiskWriter, on_error=errors.append)
    writer.start()
    for i in range(3):
        writer.submit(network_event(i))
    assert writer.flush()

    writer.failing = True
    for i in range(3, 8):
        writer.submit(network_event(i))
        assert writer.flush() is False
    time.sleep(0.6)  # idle retries of the marker fail too, without more reports
    failure_reports = [e for e in errors if "write failed" in e]
    assert len(failure_reports) == 1
    assert "No space left" in failure_reports[0]
    assert writer.dropped == 5

    writer.failing = False
    for i in range(8, 10):
        writer.submit(network_event(i))
    assert writer.flush()
    writer.close()

    events = all_events(tape_dir)
    assert [e["i"] for e in events if e["kind"] == "network"] == [0, 1, 2, 8, 9]
    markers = [e for e in events if e["kind"] == "dropped"]
    assert [(m["count"], m["total"]) for m in markers] == [(5, 5)]
    # The marker precedes the events written after the failure.
    kinds = [e["kind"] for e in events]
    assert kinds.index("dropped") < next(i for i, e in enumerate(events) if e.get("i") == 8)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert verify_tape(tape_dir).ok


def test_partial_write_is_rolled_back_before_next_lines(tape_dir: Path, signing_key: Any) -> None:
    class ShortWriteThenFail(TapeWriter):
        armed = False

        def _write_bytes(self, data: bytes) -> None:
            if self.armed:
                self.armed = False
                assert self._segment is not None
                os.write(self._segment.fd, data[: len(data) // 2])
                raise OSError(errno.EIO, "I/O error")
            super()._write_bytes(data)

    writer = make_writer(tape_dir, signing_key, ShortWriteThenFail)
    writer.start()
    writer.submit(network_event(0))
    assert writer.flush()
    writer.armed = True
    writer.submit(network_event(1, blob="q" * 500))
    assert writer.flush() is False
    writer.submit(network_event(2))
    assert writer.flush()
    writer.close()
    report = verify_tape(tape_dir)
    assert report.ok, report.first_break
    assert report.truncated == []
    assert [e["i"] for e in iter_events(tape_dir, kinds=["network"])] == [0, 2]


# The victim kills itself with SIGKILL at a known point: inside its fifth write(2), after half of the
# batch's last line reached the file. Every run tears exactly that line.
KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
from failcore.tape.keys import load_or_create_signing_key
from failcore.tape.writer import TapeWriter

class KilledMidWrite(TapeWriter):
    writes = 0

    def _write_bytes(self, data):
        self.writes += 1
        if self.writes < 5:
            return super()._write_bytes(data)
        last_line = data.rindex(b"\\n", 0, len(data) - 1) + 1
        half = last_line + (len(data) - last_line) // 2
        sys.stdout.buffer.write(data[:half])
        sys.stdout.flush()
        super()._write_bytes(data[:half])
        os.kill(os.getpid(), signal.SIGKILL)

key = load_or_create_signing_key(Path(sys.argv[1]))
writer = KilledMidWrite(Path(sys.argv[2]), signing_key=key, run_id="victim", segment_bytes=1 << 40)
writer.start()
for i in range(10):
    writer.submit({"kind": "network", "run": "victim", "i": i, "payload": "y" * 3000})
    writer.flush()
writer.close()
"""


def test_kill_9_mid_write_leaves_truncated_line_and_writer_continues(
    tape_dir: Path, signing_key: Any, confdir: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    victim = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(confdir), str(tape_dir)],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert victim.returncode == -signal.SIGKILL, victim.stderr.decode()
    segment = tape_dir / "seg-000001.jsonl"
    data = segment.read_bytes()
    # What the fifth write had put down when the kill came: the end of the file, half a line.
    written_at_kill = victim.stdout
    assert written_at_kill and data.endswith(written_at_kill) and not data.endswith(b"\n")
    complete = [orjson.loads(line) for line in data.splitlines()[:-1]]
    assert [e["i"] for e in complete if e["kind"] == "network"] == [0, 1, 2, 3]
    torn_line = data.count(b"\n") + 1
    complete_lines = data[: data.rfind(b"\n") + 1].splitlines()
    last_complete = orjson.loads(complete_lines[-1])

    report = verify_tape(tape_dir)
    assert report.ok, report.first_break
    assert report.truncated == [("seg-000001.jsonl", torn_line)]
    assert tape_head(tape_dir) == (last_complete["seq"], last_complete["h"])

    with make_writer(tape_dir, signing_key, run_id="after") as writer:
        for i in range(3):
            writer.submit(network_event(i, run="after"))

    first_new = orjson.loads((tape_dir / "seg-000002.jsonl").read_bytes().splitlines()[0])
    assert first_new["seq"] == last_complete["seq"] + 1
    assert first_new["prev"] == last_complete["h"]
    report = verify_tape(tape_dir)
    assert report.ok, report.first_break
    assert report.truncated == [("seg-000001.jsonl", torn_line)]
    assert report.segments == 2

    bad: list[tuple[TapeLine, str]] = []
    after = list(iter_events(tape_dir, run="after", on_bad_line=lambda line, msg: bad.append((line, msg))))
    assert len([e for e in after if e["kind"] == "network"]) == 3
    assert [(line.segment, line.line, line.complete) for line, _ in bad] == [
        ("seg-000001.jsonl", torn_line, False)
    ]
    with pytest.raises(TapeFormatError, match=rf"seg-000001.jsonl:{torn_line}"):
        for _ in iter_events(tape_dir):
            pass


def test_iter_events_filters_by_run_and_kind(tape_dir: Path, signing_key: Any) -> None:
    with make_writer(tape_dir, signing_key) as writer:
        writer.submit({"kind": "network", "run": "a", "i": 1})
        writer.submit({"kind": "network", "run": "b", "i": 2, "note": '"run":"a"'})
        writer.submit({"kind": "policy", "run": "a", "i": 3, "detail": {"run": "a", "kind": "network"}})
        writer.submit({"kind": "network", "run": "ab", "i": 4})
    assert [e["i"] for e in iter_events(tape_dir, run="a")] == [1, 3]
    assert [e["i"] for e in iter_events(tape_dir, run="a", kinds=["network"])] == [1]
    assert [e["i"] for e in iter_events(tape_dir, kinds="policy")] == [3]
    assert len(list(iter_events(tape_dir, kinds=["checkpoint"]))) == 1


def bytes_read_by_this_process() -> int:
    """Bytes this process has read through read(2) and friends so far (Linux: /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_iter_events_is_lazy_on_a_large_tape(tape_dir: Path) -> None:
    tape_dir.mkdir(mode=0o700)
    segment = tape_dir / "seg-000001.jsonl"
    prev = b"0" * 64
    with open(segment, "wb") as f:
        chunk: list[bytes] = []
        for seq in range(1, 200_001):
            line, prev = encode_line(
                prev, seq, b'{"kind":"network","run":"r","i":%d,"pad":"%s"}' % (seq, b"p" * 60)
            )
            chunk.append(line)
            if len(chunk) == 10_000:
                f.write(b"".join(chunk))
                chunk.clear()
    size = segment.stat().st_size

    events = iter_events(tape_dir)
    assert isinstance(events, types.GeneratorType)
    # Lazy: the first event comes after reading a small part of the segment, not all of it. (The reader's
    # peak memory over the whole tape: benchmarks/bench_bounds.py.)
    read_before = bytes_read_by_this_process()
    first = next(events)
    assert first["seq"] == 1
    assert bytes_read_by_this_process() - read_before < size / 8, size
    count = 1
    last_seq = 1
    for event in events:
        count += 1
        last_seq = event["seq"]
    assert count == 200_000
    assert last_seq == 200_000
    assert tape_head(tape_dir) == (200_000, prev.decode())


def test_follow_sees_lines_across_rotation(tape_dir: Path, signing_key: Any) -> None:
    writer = make_writer(tape_dir, signing_key, segment_bytes=3000)
    writer.start()
    for i in range(5):
        writer.submit(network_event(i, phase="before"))
    assert writer.flush()

    done = threading.Event()
    seen: list[dict[str, Any]] = []
    stream = follow(tape_dir, poll=0.02, from_end=True, stop=done.is_set)

    def consume() -> None:
        for event in stream:
            if event["kind"] == "network":
                seen.append(event)
                if len(seen) == 40:
                    done.set()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    for i in range(40):
        writer.submit(network_event(i, phase="after", blob="f" * 120))
        if i % 7 == 0:
            writer.flush()
    writer.close()
    consumer.join(timeout=20)
    done.set()
    assert not consumer.is_alive()
    assert len(list_segments(tape_dir)) >= 3
    assert [e["i"] for e in seen] == list(range(40))
    assert {e["phase"] for e in seen} == {"after"}


def test_follow_from_start_waits_for_first_segment(tape_dir: Path, signing_key: Any) -> None:
    done = threading.Event()
    seen: list[int] = []
    stream = follow(tape_dir, poll=0.02, from_end=False, stop=done.is_set)

    def consume() -> None:
        for event in stream:
            if event["kind"] == "network":
                seen.append(event["i"])
                if len(seen) == 3:
                    done.set()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    time.sleep(0.1)
    with make_writer(tape_dir, signing_key) as writer:
        for i in range(3):
            writer.submit(network_event(i))
    consumer.join(timeout=10)
    done.set()
    assert seen == [0, 1, 2]


def test_start_refuses_a_tape_whose_last_line_is_garbage(tape_dir: Path, signing_key: Any) -> None:
    with make_writer(tape_dir, signing_key) as writer:
        writer.submit(network_event(0))
    segment = tape_dir / "seg-000001.jsonl"
    intact = segment.read_bytes()
    segment.write_bytes(intact + b"this is not a tape line\n")
    with pytest.raises(TapeFormatError):
        make_writer(tape_dir, signing_key).start()
    segment.write_bytes(intact)
    with make_writer(tape_dir, signing_key):  # the failed start released the lock
        pass
    assert verify_tape(tape_dir).ok


# ---------------------------------------------------------------- writer health (fail-closed)


def test_fault_is_known_before_the_next_event_and_clears_when_writes_succeed(
    tape_dir: Path, signing_key: Any
) -> None:
    writer = make_writer(tape_dir, signing_key, FlakyDiskWriter, on_error=lambda _m: None)
    assert writer.fault() == "the tape writer is not running"
    writer.start()
    writer.submit(network_event(0))
    assert writer.flush()
    assert writer.fault() is None

    writer.failing = True
    writer.submit(network_event(1))
    assert writer.flush() is False
    fault = writer.fault()
    assert fault is not None and "No space left on device" in fault

    writer.failing = False  # the writer retries its pending drop marker on its own
    deadline = time.monotonic() + 5
    while writer.fault() is not None:
        assert time.monotonic() < deadline, writer.fault()
        time.sleep(0.02)
    writer.close()
    assert writer.fault() == "the tape writer is closed"


def test_fault_when_the_queue_is_full(tape_dir: Path, signing_key: Any) -> None:
    gate = threading.Event()

    class StuckWriter(TapeWriter):
        def _write_bytes(self, data: bytes) -> None:
            gate.wait(10)
            super()._write_bytes(data)

    writer = make_writer(tape_dir, signing_key, StuckWriter, queue_size=4)
    writer.start()
    try:
        for i in range(50):
            writer.submit(network_event(i))
        fault = writer.fault()
        assert fault is not None and "queue is full" in fault
    finally:
        gate.set()
        writer.close()


def test_fault_when_free_space_is_below_the_reserve(tape_dir: Path, signing_key: Any) -> None:
    free = os.statvfs(tape_dir.parent).f_bavail * os.statvfs(tape_dir.parent).f_frsize
    with make_writer(tape_dir, signing_key, reserve_bytes=free * 4 + 2**40) as writer:
        fault = writer.fault()
        assert fault is not None and "reserve" in fault
    with make_writer(tape_dir, signing_key, reserve_bytes=1) as writer:
        assert writer.fault() is None


def test_the_last_checkpoint_of_a_writer_names_itself_final(tape_dir: Path, signing_key: Any) -> None:
    for run in range(2):
        with make_writer(tape_dir, signing_key, checkpoint_every=2) as writer:
            for i in range(5):
                writer.submit(network_event(i, run=f"run-{run}"))
    checkpoints = [e for e in all_events(tape_dir) if e["kind"] == "checkpoint"]
    assert [c["final"] for c in checkpoints] == [False, False, True] * 2
    assert [e["kind"] for e in all_events(tape_dir)][-1] == "checkpoint"
    report = verify_tape(tape_dir, public_key=signing_key.public_key())
    assert (report.status, report.final, report.signatures_ok) == ("ok", True, 6)
    manifest = orjson.loads((tape_dir / "manifest.json").read_bytes())
    assert manifest["head"] == {"seq": report.head_seq, "h": report.head_h, "final": True}


def test_submits_while_the_writer_is_busy_wake_no_thread(tape_dir: Path, signing_key: Any) -> None:
    """The proxy's event loop submits every event; only a submit that finds the writer idle wakes it.
    While the writer works, submits only queue, and the writer takes them with its next batch."""
    entered, gate = threading.Event(), threading.Event()

    class SlowWriter(TapeWriter):
        def _write_bytes(self, data: bytes) -> None:
            entered.set()
            gate.wait(10)
            super()._write_bytes(data)

    class CountingEvent(threading.Event):
        sets = 0

        def set(self) -> None:
            CountingEvent.sets += 1
            super().set()

    writer = make_writer(tape_dir, signing_key, SlowWriter)
    writer._wake = CountingEvent()
    writer.start()
    try:
        assert writer.submit(network_event(0))
        assert entered.wait(10)  # the writer took it and is busy writing it
        woken = CountingEvent.sets
        for i in range(1, 101):
            assert writer.submit(network_event(i))
        assert CountingEvent.sets == woken
        assert writer.queue_depth == 100
    finally:
        gate.set()
        writer.close()
    assert writer.written == 101 and writer.dropped == 0
    events = [e for e in all_events(tape_dir) if e.get("kind") == "network"]
    assert [e["i"] for e in events] == list(range(101))


def test_flush_and_close_do_not_wait_for_the_coalescing_window(tape_dir: Path, signing_key: Any) -> None:
    """Under load the writer gathers a batch per window; a flush or close() is answered at once (with
    an hour-long window, these would otherwise time out)."""
    writer = make_writer(tape_dir, signing_key, coalesce_seconds=3600.0)
    writer.start()
    for i in range(3):
        assert writer.submit(network_event(i))
    assert writer.flush(timeout=30)
    assert [e["i"] for e in all_events(tape_dir) if e.get("kind") == "network"] == [0, 1, 2]
    assert writer.submit(network_event(3))
    writer.close(timeout=30)
    assert writer._thread is not None and not writer._thread.is_alive()
    assert [e["i"] for e in all_events(tape_dir) if e.get("kind") == "network"] == [0, 1, 2, 3]


def test_a_half_full_queue_is_written_without_waiting_for_the_window(
    tape_dir: Path, signing_key: Any
) -> None:
    writer = make_writer(tape_dir, signing_key, coalesce_seconds=3600.0, queue_size=8)
    writer.start()
    try:
        for i in range(4):
            assert writer.submit(network_event(i))
        deadline = time.monotonic() + 30
        while writer.written < 4:  # no flush: the half-full queue wakes the writer by itself
            assert time.monotonic() < deadline, writer.written
            time.sleep(0.01)
        assert writer.dropped == 0
    finally:
        writer.close(timeout=30)


def test_coalesce_seconds_must_not_be_negative(tape_dir: Path, signing_key: Any) -> None:
    with pytest.raises(ValueError, match="coalesce_seconds"):
        make_writer(tape_dir, signing_key, coalesce_seconds=-1.0)
