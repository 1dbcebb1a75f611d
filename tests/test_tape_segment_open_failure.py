"""Rotation when the next segment's fchmod fails (a file system that refuses chmod: EPERM on some
network or FUSE mounts).

The writer created the next segment (O_CREAT | O_EXCL), then fchmod raised: the rotation was given up
but the new, empty file stayed. Readers take every segment but the last for sealed and map it
(failcore.runs, the viewer and the report): the segment the writer went on writing, and may truncate
to undo a partial write, was mapped, and touching a page past its new end kills the reader (SIGBUS).
Every later rotation then failed too (the next segment's name was taken), so the segment grew without
bound. Now a refused fchmod of a file already private (O_CREAT with 0o600 makes it so) is no failure;
a file that is not private is removed before the rotation is given up."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest

from failcore.tape import list_segments
from failcore.tape.keys import load_or_create_signing_key
from failcore.tape.reader import iter_events
from failcore.tape.verify import verify_tape
from failcore.tape.writer import TapeWriter


def refuse_fchmod_of_segment(monkeypatch: pytest.MonkeyPatch, number: int, *, widen: bool) -> list[str]:
    """os.fchmod raising EPERM, once, for segment `number` (having made it 0644 first, with `widen`)."""
    real = os.fchmod
    refused: list[str] = []

    def fchmod(fd: int, mode: int) -> None:
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if name.startswith(f"seg-{number:06d}") and not refused:
            refused.append(name)
            if widen:
                real(fd, 0o644)
            raise OSError(errno.EPERM, "Operation not permitted")
        real(fd, mode)

    monkeypatch.setattr(os, "fchmod", fchmod)
    return refused


def write(tape: Path, confdir: Path, errors: list[str]) -> None:
    key = load_or_create_signing_key(confdir)
    with TapeWriter(tape, signing_key=key, run_id="run-1", segment_bytes=4096, on_error=errors.append) as w:
        for i in range(120):
            assert w.submit({"kind": "network", "run": "run-1", "i": i, "blob": "z" * 150})


def assert_sealed_and_private(tape: Path) -> None:
    segments = list_segments(tape)
    assert len(segments) >= 4, [p.name for p in segments]
    for path in segments:  # none left empty, each sealed by a checkpoint, each private
        assert orjson.loads(path.read_bytes().splitlines()[-1])["kind"] == "checkpoint", path.name
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path.name
    assert [e["i"] for e in iter_events(tape) if e["kind"] == "network"] == list(range(120))
    report = verify_tape(tape)
    assert report.ok, report.first_break


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names an fd through /proc")
def test_a_refused_fchmod_of_a_private_segment_does_not_stop_rotation(
    tmp_path: Path, monkeypatch: Any
) -> None:
    refused = refuse_fchmod_of_segment(monkeypatch, 2, widen=False)
    errors: list[str] = []
    write(tmp_path / "tape", tmp_path / "conf", errors)
    assert refused, "the rotation never reached the second segment: the test proves nothing"
    assert errors == []
    assert_sealed_and_private(tmp_path / "tape")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names an fd through /proc")
def test_a_segment_that_cannot_be_made_private_is_removed_and_rotation_retried(
    tmp_path: Path, monkeypatch: Any
) -> None:
    refused = refuse_fchmod_of_segment(monkeypatch, 2, widen=True)
    errors: list[str] = []
    write(tmp_path / "tape", tmp_path / "conf", errors)
    assert refused
    assert len(errors) == 1 and "cannot open a new tape segment" in errors[0], errors
    assert_sealed_and_private(tmp_path / "tape")
