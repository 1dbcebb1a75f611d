"""Where the viewer caches its index of a tape's sealed segments (under failcore's home, 0700, one
directory per tape), and the pruning of caches whose tape is gone or that nobody opened for a while."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

from failcore.paths import ensure_private_dir, failcore_home, write_private_file
from failcore.tape.reader import list_segments

CACHE_KEEP_DAYS = 30


def default_cache_dir(tape_dir: Path) -> Path:
    key = hashlib.sha256(str(Path(tape_dir).resolve()).encode()).hexdigest()[:32]
    return failcore_home() / "view-index" / key


def prepare_cache_dir(tape_dir: Path, keep_days: float = CACHE_KEEP_DAYS) -> Path:
    """The view cache for this tape, marked as used now; caches of tapes that are gone, or that no
    viewer opened for `keep_days`, are deleted, and so are this tape's entries for deleted segments."""
    cache = default_cache_dir(tape_dir)
    try:
        ensure_private_dir(cache)
        write_private_file(cache / "source", str(Path(tape_dir).resolve()).encode())
        os.utime(cache)
        prune_view_caches(cache.parent, keep_days)
        live = {p.name for p in list_segments(Path(tape_dir))}
        entries = [*cache.glob("*.idx"), *cache.glob("*.sum"), *cache.glob("*.tail"), *cache.glob("*.rep-*")]
        for entry in entries:  # .rep-*: the report's aggregates (failcore.report.aggregates)
            if entry.name.rsplit(".", 1)[0] not in live:
                entry.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only home only costs rescans
    return cache


def prune_view_caches(root: Path, keep_days: float) -> list[Path]:
    """Delete the view caches under `root` whose tape is gone or that were not used for `keep_days`."""
    removed = []
    horizon = time.time() - keep_days * 86400
    for cache in root.iterdir() if root.is_dir() else ():
        if not cache.is_dir() or cache.is_symlink():
            continue
        try:
            source = Path((cache / "source").read_text("utf-8"))
            stale = not source.is_dir() or cache.stat().st_mtime < horizon
        except (OSError, ValueError):
            stale = cache.stat().st_mtime < horizon  # caches from before `source` was written age out
        if stale:
            shutil.rmtree(cache, ignore_errors=True)
            removed.append(cache)
    return removed
