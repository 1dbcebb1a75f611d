"""TapeWriter.fault()'s free-space check: a reading is reused only while it left ROOMY_BYTES above the
reserve, for as long as filling that room at 100 GiB/s would take (at most a second); nearer the
reserve every call reads the file system afresh, so a disk that fills is refused at the next call."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from failcore.tape import writer as tape_writer
from failcore.tape.keys import load_or_create_signing_key
from failcore.tape.writer import TapeWriter
from tests.helpers import make_writer

RESERVE = 16 << 20
_statvfs = os.statvfs


class Disk:
    """os.statvfs of the tape's directory, with the free space the test says."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.reads = 0

    def statvfs(self, path: Any) -> os.statvfs_result:
        self.reads += 1
        real = _statvfs(path)
        blocks = self.free // real.f_frsize
        return os.statvfs_result((*real[:4], blocks, *real[5:]))


@pytest.fixture
def signing_key(confdir: Path) -> Any:
    return load_or_create_signing_key(confdir)


@pytest.fixture
def tape_dir(tmp_path: Path) -> Path:
    return tmp_path / "tape"


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    fake = Disk(0)
    monkeypatch.setattr(tape_writer.os, "statvfs", fake.statvfs)
    return fake


def test_near_the_reserve_every_call_reads_the_disk(tape_dir: Path, signing_key: Any, disk: Disk) -> None:
    disk.free = RESERVE + TapeWriter.ROOMY_BYTES - 4096  # room, but less than ROOMY_BYTES above it
    with make_writer(tape_dir, signing_key, reserve_bytes=RESERVE) as writer:
        assert writer.fault() is None
        before = disk.reads
        disk.free = RESERVE - 4096  # filled by someone else right after
        fault = writer.fault()
        assert fault is not None and "reserve" in fault
        assert disk.reads == before + 1


def test_a_roomy_reading_is_reused_briefly(tape_dir: Path, signing_key: Any, disk: Disk) -> None:
    disk.free = RESERVE + TapeWriter.ROOMY_BYTES
    with make_writer(tape_dir, signing_key, reserve_bytes=RESERVE) as writer:
        writer.ROOMY_MAX_SECONDS = 3600.0  # type: ignore[misc]  # (no clock in the test's way)
        writer.FILL_BYTES_PER_SECOND = 1  # type: ignore[misc]
        assert writer.fault() is None
        reads = disk.reads
        disk.free = RESERVE - 4096
        assert writer.fault() is None  # the reading is trusted within the bound
        assert disk.reads == reads
        writer._roomy_until = 0.0  # the bound has passed
        fault = writer.fault()
        assert fault is not None and "reserve" in fault
        assert disk.reads == reads + 1


@pytest.mark.parametrize(
    ("room", "trusted_seconds"),
    [
        (1 << 30, 0.01),  # 1 GiB above the reserve: 10 ms at 100 GiB/s
        (10 << 30, 0.1),  # 10 GiB: 100 ms
        (1 << 40, 1.0),  # 1 TiB would be 10 s: at most a second
    ],
)
def test_a_reading_is_trusted_as_long_as_its_room_takes_to_fill(
    tape_dir: Path, signing_key: Any, disk: Disk, room: int, trusted_seconds: float
) -> None:
    disk.free = RESERVE + room
    with make_writer(tape_dir, signing_key, reserve_bytes=RESERVE) as writer:
        before = time.monotonic()
        assert writer.fault() is None
        after = time.monotonic()
        assert before + trusted_seconds - 1e-6 <= writer._roomy_until <= after + trusted_seconds + 1e-6
