"""The viewer's index cache (FAILCORE_HOME/view-index) does not grow without bound."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from failcore.tui.index import build_index, default_cache_dir, prepare_cache_dir


def make_tape(path: Path, segments: int) -> Path:
    path.mkdir(parents=True)
    for n in range(1, segments + 1):
        (path / f"seg-{n:06d}.jsonl").write_bytes(b"")
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FAILCORE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_caches_of_deleted_tapes_and_unused_ones_are_pruned_on_open(home: Path, tmp_path: Path) -> None:
    kept = make_tape(tmp_path / "kept", 1)
    gone = make_tape(tmp_path / "gone", 1)
    old = make_tape(tmp_path / "old", 1)
    caches = {name: prepare_cache_dir(tape) for name, tape in (("kept", kept), ("gone", gone), ("old", old))}
    assert all(c.is_dir() and (c / "source").is_file() for c in caches.values())
    for segment in gone.iterdir():
        segment.unlink()
    gone.rmdir()
    month_ago = time.time() - 40 * 86400
    os.utime(caches["old"], (month_ago, month_ago))

    assert prepare_cache_dir(kept) == caches["kept"] == default_cache_dir(kept)
    assert caches["kept"].is_dir()
    assert not caches["gone"].exists(), "the cache of a deleted tape is deleted"
    assert not caches["old"].exists(), "a cache nobody opened for 30 days is deleted"
    assert oct(caches["kept"].stat().st_mode & 0o777) == "0o700"


def test_index_entries_of_deleted_segments_are_dropped(home: Path, tmp_path: Path) -> None:
    tape = make_tape(tmp_path / "tape", 3)
    cache = prepare_cache_dir(tape)
    for n in (1, 2, 3):
        (cache / f"seg-{n:06d}.jsonl.idx").write_bytes(b"x")
    (tape / "seg-000001.jsonl").unlink()  # rotated away
    prepare_cache_dir(tape)
    assert sorted(p.name for p in cache.glob("*.idx")) == ["seg-000002.jsonl.idx", "seg-000003.jsonl.idx"]
    build_index(tape, cache)  # the cache still serves the index
