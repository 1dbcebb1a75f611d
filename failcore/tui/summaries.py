"""Run summaries of a whole tape from the viewer's index cache: what `failcore list` prints, without
reading every line again.

A sealed segment's runs.RunSummary parts are cached in its `<segment>.sum` entry (keyed by the segment's
name, size and mtime, like the viewer's `.idx` entries, whose per-run stats are used when only they
exist); a missing one is counted once, parsing lines exactly as runs.summarize does (no index columns are
built: a cold `list` costs what it did). The segment being written keeps a
small `<segment>.tail` entry: the summaries of its first `end_offset` bytes and a BLAKE2b digest of those
bytes, so the next call re-hashes the prefix (cheap) instead of re-parsing it, and parses only the lines
appended since. Any mismatch (truncated, edited, corrupt, other version) means a rescan, never a wrong
count. The result equals runs.summarize_tape for every tape failcore writes.

Every line counted is also checked on its own (tape/badlines.py: layout, own hash, JSON); the broken
ones are kept in the entries by line number, so a warm `list` names them again without re-reading.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import orjson

from failcore.paths import ensure_private_dir, write_private_file
from failcore.runs import RunSummary
from failcore.tape.badlines import BadLines, LineNumbers, line_problem, parse_checked
from failcore.tape.reader import list_segments
from failcore.tui.index import CACHE_VERSION, TapeIndexer, _stat

ProgressCallback = Callable[[int, int], None]
# A segment's broken lines: [line number, why], in order.
Broken = list[list[Any]]

_TAIL_SUFFIX: Final = ".tail"
_SUM_SUFFIX: Final = ".sum"
_READ_BUFFER: Final = 1 << 20
_HASH_BLOCK: Final = 1 << 20


def summarize_tape_cached(
    tape_dir: Path,
    cache_dir: Path | None,
    progress: ProgressCallback | None = None,
    bad: BadLines | None = None,
) -> list[RunSummary]:
    """Every run of the tape, ordered as runs.summarize_tape orders them; `progress(done, total)` in bytes.
    Broken lines (cached ones too) are added to `bad`."""
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
            parts, broken = _sealed_parts(indexer, path, stat, cache_dir)
            if cache_dir is not None:
                (cache_dir / f"{path.name}{_TAIL_SUFFIX}").unlink(missing_ok=True)  # sealed since
        else:
            parts, broken = _open_parts(path, cache_dir)
        for line, why in broken if bad is not None else ():
            bad.add(path.name, line, why)
        for part in parts:
            known = merged.get(part.run)
            if known is None:
                known = merged[part.run] = RunSummary(part.run)
            known.merge(part)
        done += stat[0]
        if progress:
            progress(done, total)
    return sorted(merged.values(), key=lambda r: r.started or 0.0)


def _sealed_parts(
    indexer: TapeIndexer, path: Path, stat: tuple[int, int], cache_dir: Path | None
) -> tuple[list[RunSummary], Broken]:
    entry = cache_dir / f"{path.name}{_SUM_SUFFIX}" if cache_dir is not None else None
    if entry is not None:
        loaded = _load_sum(entry, path.name, *stat)
        if loaded is not None:
            return loaded
    chunk = indexer._load_cached(path.name, *stat)  # the viewer indexed it already
    broken: Broken | None = None
    if chunk is not None:
        # The viewer's index has a row for each line that parsed; its lines' hashes are checked here
        # (no JSON is parsed). A line without a row is counted again, to name it.
        lines, at = _check_lines(path)
        if lines == len(chunk):
            parts, broken = list(chunk.stats.values()), _numbered(path, at)
    if broken is None:
        parts, _, at = _count_lines(path, 0)
        broken = _numbered(path, at)
    if entry is not None and _stat(path) == stat:
        _store(entry, {"segment": path.name, "size": stat[0], "mtime_ns": stat[1]}, parts, broken)
    return parts, broken


def _numbered(path: Path, broken: list[tuple[int, str]]) -> Broken:
    """[line number, why] of broken lines found at byte offsets (counted only when there are some)."""
    numbers = LineNumbers(path)
    return [[numbers.at(offset), why] for offset, why in broken]


def _check_lines(path: Path) -> tuple[int, list[tuple[int, str]]]:
    """(complete lines, (offset, why) of those whose layout or own hash is broken) of a sealed segment."""
    lines, offset, broken = 0, 0, []
    with open(path, "rb", buffering=_READ_BUFFER) as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            if (why := line_problem(line[:-1])) is not None:
                broken.append((offset, why))
            lines += 1
            offset += len(line)
    return lines, broken


def _count_lines(path: Path, start: int) -> tuple[list[RunSummary], int, list[tuple[int, str]]]:
    """Summaries of the complete lines from `start`, as runs.summarize counts them; where they end; the
    (offset, why) of the broken ones (tape/badlines.py)."""
    runs: dict[str, RunSummary] = {}
    broken: list[tuple[int, str]] = []
    end = start
    with open(path, "rb", buffering=_READ_BUFFER) as f:
        f.seek(start)
        for line in f:
            if not line.endswith(b"\n"):
                break  # a line still being written (or cut by a crash): counted once complete
            offset = end
            end += len(line)
            event, why = parse_checked(line[:-1])
            if why is not None:
                broken.append((offset, why))
            if event is None:
                continue
            run = event.get("run")
            if not run or not isinstance(run, str):
                continue
            summary = runs.get(run)
            if summary is None:
                summary = runs[run] = RunSummary(run)
            summary.add(event)
    return list(runs.values()), end, broken


def _open_parts(path: Path, cache_dir: Path | None) -> tuple[list[RunSummary], Broken]:
    entry = cache_dir / f"{path.name}{_TAIL_SUFFIX}" if cache_dir is not None else None
    digest = hashlib.blake2b(digest_size=32)
    parts: list[RunSummary] = []
    broken: Broken = []
    start = 0
    cached = _load_tail(entry, path.name) if entry is not None else None
    if cached is not None:
        end_offset, want, cached_parts, cached_broken = cached
        if _hash_range(path, 0, end_offset, digest) == end_offset and digest.hexdigest() == want:
            parts, start, broken = cached_parts, end_offset, cached_broken
        else:
            digest = hashlib.blake2b(digest_size=32)
    added, end, found = _count_lines(path, start)
    parts = _merge_parts(parts, added)
    broken = broken + _numbered(path, found)
    if end != start and _hash_range(path, start, end, digest) != end - start:
        return parts, broken  # the segment shrank while being read: count it, cache nothing
    if entry is not None and (cached is None or end != start or start == 0):
        fields = {"segment": path.name, "end_offset": end, "blake2b": digest.hexdigest()}
        _store(entry, fields, parts, broken)
    return parts, broken


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


def _load_record(
    entry: Path, expected: dict[str, Any]
) -> tuple[dict[str, Any], list[RunSummary], Broken] | None:
    """An entry's record, summaries and broken lines; None for any other (or an older) entry."""
    try:
        data = orjson.loads(entry.read_bytes())
        if not isinstance(data, dict) or any(data.get(k) != v for k, v in expected.items()):
            return None
        broken = data["broken"]
        if not isinstance(broken, list) or not all(
            isinstance(b, list) and len(b) == 2 and isinstance(b[0], int) and isinstance(b[1], str)
            for b in broken
        ):
            return None
        return data, [RunSummary.from_dict(s) for s in data["stats"]], broken
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _load_sum(entry: Path, segment: str, size: int, mtime_ns: int) -> tuple[list[RunSummary], Broken] | None:
    expected = {"version": CACHE_VERSION, "segment": segment, "size": size, "mtime_ns": mtime_ns}
    loaded = _load_record(entry, expected)
    return (loaded[1], loaded[2]) if loaded is not None else None


def _load_tail(entry: Path, segment: str) -> tuple[int, str, list[RunSummary], Broken] | None:
    loaded = _load_record(entry, {"version": CACHE_VERSION, "segment": segment})
    if loaded is None:
        return None
    data, parts, broken = loaded
    end_offset, digest = data.get("end_offset"), data.get("blake2b")
    if not isinstance(end_offset, int) or end_offset < 0 or not isinstance(digest, str):
        return None
    return end_offset, digest, parts, broken


def _store(entry: Path, fields: dict[str, Any], parts: list[RunSummary], broken: Broken) -> None:
    record = {"version": CACHE_VERSION, **fields, "stats": [p.to_dict() for p in parts], "broken": broken}
    try:
        ensure_private_dir(entry.parent)
        write_private_file(entry, orjson.dumps(record))
    except OSError:
        pass  # a read-only home only costs the next call a rescan
