"""Run summaries of a whole tape from the viewer's index cache: what `failcore list` prints, without
reading every line again.

A sealed segment's runs.RunSummary parts come from its cached index chunk (failcore.tui.index, keyed by
the segment's name, size and mtime) or are indexed once and cached. The segment being written keeps a
small `<segment>.tail` entry: the summaries of its first `end_offset` bytes and a BLAKE2b digest of those
bytes, so the next call re-hashes the prefix (cheap) instead of re-parsing it, and parses only the lines
appended since. Any mismatch (truncated, edited, corrupt, other version) means a rescan, never a wrong
count. The result equals runs.summarize_tape for every tape failcore writes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import orjson

from failcore.paths import ensure_private_dir, write_private_file
from failcore.runs import RunSummary
from failcore.tape.reader import list_segments
from failcore.tui.index import CACHE_VERSION, TapeIndexer, _stat

ProgressCallback = Callable[[int, int], None]

_TAIL_SUFFIX: Final = ".tail"
_HASH_BLOCK: Final = 1 << 20


def summarize_tape_cached(
    tape_dir: Path, cache_dir: Path | None, progress: ProgressCallback | None = None
) -> list[RunSummary]:
    """Every run of the tape, ordered as runs.summarize_tape orders them; `progress(done, total)` in bytes."""
    tape_dir = Path(tape_dir)
    indexer = TapeIndexer(tape_dir, cache_dir)
    segments = list_segments(tape_dir)
    stats = {p.name: _stat(p) for p in segments}
    total = sum(s[0] for s in stats.values() if s is not None)
    done = 0
    merged: dict[str, RunSummary] = {}
    for number, path in enumerate(segments):
        stat = stats[path.name]
        if stat is None:
            continue
        if number < len(segments) - 1:
            parts = _sealed_parts(indexer, path, stat)
            if cache_dir is not None:
                (cache_dir / f"{path.name}{_TAIL_SUFFIX}").unlink(missing_ok=True)
        else:
            parts = _open_parts(path, cache_dir)
        for part in parts:
            known = merged.get(part.run)
            if known is None:
                known = merged[part.run] = RunSummary(part.run)
            known.merge(part)
        done += stat[0]
        if progress:
            progress(done, total)
    return sorted(merged.values(), key=lambda r: r.started or 0.0)


def _sealed_parts(indexer: TapeIndexer, path: Path, stat: tuple[int, int]) -> list[RunSummary]:
    chunk = indexer._load_cached(path.name, *stat)
    if chunk is not None:
        return list(chunk.stats.values())
    parts: list[RunSummary] = []
    for chunk in indexer._scan_segment(path, 0, None):  # one chunk: the whole segment
        if _stat(path) == stat:
            indexer._store_cached(chunk, *stat)
        parts.extend(chunk.stats.values())
    return parts


def _open_parts(path: Path, cache_dir: Path | None) -> list[RunSummary]:
    entry = cache_dir / f"{path.name}{_TAIL_SUFFIX}" if cache_dir is not None else None
    digest = hashlib.blake2b(digest_size=32)
    parts: list[RunSummary] = []
    start = 0
    cached = _load_tail(entry, path.name) if entry is not None else None
    if cached is not None:
        end_offset, want, cached_parts = cached
        if _hash_range(path, 0, end_offset, digest) == end_offset and digest.hexdigest() == want:
            parts, start = cached_parts, end_offset
        else:
            digest = hashlib.blake2b(digest_size=32)
    end = start
    for chunk in TapeIndexer(path.parent)._scan_segment(path, start, None):
        parts = _merge_parts(parts, list(chunk.stats.values()))
        end = chunk.end_offset
    if end != start and _hash_range(path, start, end, digest) != end - start:
        return parts  # the segment shrank while being read: count it, cache nothing
    if entry is not None and (cached is None or end != start or start == 0):
        _store_tail(entry, path.name, end, digest.hexdigest(), parts)
    return parts


def _merge_parts(before: list[RunSummary], after: list[RunSummary]) -> list[RunSummary]:
    runs = {p.run: p for p in before}
    for part in after:
        known = runs.get(part.run)
        if known is None:
            runs[part.run] = part
        else:
            known.merge(part)
    return list(runs.values())


def _hash_range(path: Path, start: int, end: int, digest: Any) -> int:
    """Feed bytes [start, end) of the file to `digest`; how many there were."""
    seen = 0
    with open(path, "rb") as f:
        f.seek(start)
        while seen < end - start:
            block = f.read(min(_HASH_BLOCK, end - start - seen))
            if not block:
                break
            digest.update(block)
            seen += len(block)
    return seen


def _load_tail(entry: Path, segment: str) -> tuple[int, str, list[RunSummary]] | None:
    try:
        data = orjson.loads(entry.read_bytes())
        if not isinstance(data, dict):
            return None
        if data.get("version") != CACHE_VERSION or data.get("segment") != segment:
            return None
        end_offset, digest = data["end_offset"], data["blake2b"]
        if not isinstance(end_offset, int) or end_offset < 0 or not isinstance(digest, str):
            return None
        return end_offset, digest, [RunSummary.from_dict(s) for s in data["stats"]]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _store_tail(entry: Path, segment: str, end_offset: int, digest: str, parts: list[RunSummary]) -> None:
    record = {
        "version": CACHE_VERSION,
        "segment": segment,
        "end_offset": end_offset,
        "blake2b": digest,
        "stats": [p.to_dict() for p in parts],
    }
    try:
        ensure_private_dir(entry.parent)
        write_private_file(entry, orjson.dumps(record))
    except OSError:
        pass  # a read-only home only costs the next call a rescan
