"""What the report counts over a whole run, per tape segment, cached next to the viewer's index.

The page's numbers cover the whole run (the summary, the host table, every section's total and
left-out count), but it shows only the first `max_events` rows of each list. A `RunPart` holds those
numbers for one run in one segment, plus the byte offsets of the first OFFSET_CAP lines of each list,
so a report reads its aggregates and parses only the lines it shows.

Parts are cached under the view index's directory (failcore.tui.cache, one entry per segment and run:
`<segment>.rep-<digest of the run id>`, 0600, JSON). A sealed segment's entry is keyed, like the `.sum`
entries of `failcore list`, by the segment's name, size and mtime; the segment being written keeps the
part of its first `end_offset` bytes with a BLAKE2b digest of them, re-hashed on use, and only the
lines appended since are read. An entry that is missing, stale, unreadable, of another version or shape,
not a regular 0600 file of this user, or whose offsets do not lead to the run's own lines is ignored
and rebuilt from the tape, never trusted. Entries hold counts, offsets, host names, rule and tool names
exactly as the tape holds them (what the recorder masked stays masked) and never a body.

Size: ~550 lines: the fold of a segment's events into a part, the part's JSON form with every field
checked on load (a cache entry is hostile input), and the keying and lookup of entries are one format;
split apart, each piece would have to know the others' layout.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat as stat_mod
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, Final

import orjson

from failcore.paths import ensure_private_dir, write_private_file
from failcore.report.collect import _HIDDEN_KINDS as HIDDEN_KINDS
from failcore.report.collect import HostStats, RunReport, as_dict, as_list, count_exchange, host_key
from failcore.runs import RunSummary, segment_chunks, segment_lines_holding
from failcore.tape.reader import list_segments
from failcore.views.runtime import RUNTIME_KINDS

CACHE_VERSION: Final = 1
ENTRY_MARK: Final = ".rep-"
# The lists of the page, in the order the collector meets them within one event (hosts is the host
# table: its rows are counted, not listed by offset).
SECTIONS: Final = ("timeline", "hosts", "tools", "blocked", "warned", "failed", "warnings", "dlp", "llm")
LISTS: Final = tuple(s for s in SECTIONS if s != "hosts")
# Offsets kept per list, part and run: a report bounded by at most OFFSET_CAP - 1 rows is served from
# the cache (one more than the bound places the list's left-out count among the others).
OFFSET_CAP: Final = 10_001
_MAX_ENTRY_BYTES: Final = 256 * 2**20
_HASH_CHUNK: Final = 8 * 2**20
_MAX_EXACT_DIGITS: Final = 2048
_SPECIALS: Final = {"0.0": 0.0, "inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}
_SUMMARY_FIELDS: Final = {f.name: f.type for f in fields(RunSummary)}
_HOST_INTS: Final = ("requests", "blocked", "warned", "failed", "bytes_out", "bytes_in", "latency_count")


class RunPart:
    """One run's aggregates over one segment (or a prefix of it)."""

    __slots__ = ("counts", "events", "hosts", "offsets", "summary")

    def __init__(self, run: str) -> None:
        self.summary = RunSummary(run)
        self.events = 0
        # host -> (offset of its first exchange, its row), in the order the hosts first appear.
        self.hosts: dict[str, tuple[int, HostStats]] = {}
        self.counts = dict.fromkeys(LISTS, 0)
        self.offsets: dict[str, list[int]] = {s: [] for s in LISTS}

    def _item(self, section: str, offset: int) -> None:
        self.counts[section] += 1
        kept = self.offsets[section]
        if len(kept) < OFFSET_CAP:
            kept.append(offset)

    def add(self, ev: dict[str, Any], offset: int) -> None:
        """Count one event of the run, which starts at byte `offset` of its segment (as the collector
        in collect.py counts it)."""
        self.events += 1
        self.summary.add(ev)
        kind = ev.get("kind")
        if kind in HIDDEN_KINDS:
            return
        self._item("timeline", offset)
        get = ev.get
        if kind == "network":
            key = host_key(ev)
            entry = self.hosts.get(key)
            if entry is None:
                entry = self.hosts[key] = (offset, HostStats(key))
            count_exchange(entry[1], get)
            self._verdict(get, offset)
            if get("warnings") or get("dlp"):
                self._findings(ev, offset)
            if isinstance(get("llm"), dict):
                self._item("llm", offset)
        elif kind in RUNTIME_KINDS:
            if kind == "tool":
                self._item("tools", offset)
            self._verdict(get, offset)
            self._findings(ev, offset)
        elif kind == "internal_error":
            self._item("failed", offset)

    def _verdict(self, get: Callable[[str], Any], offset: int) -> None:
        """The blocked / warned / failed lists an exchange or a runtime event belongs to."""
        outcome = get("outcome")
        if outcome == "BLOCKED":
            self._item("blocked", offset)
        elif get("decision") == "WARN":
            self._item("warned", offset)
        if outcome == "FAIL":
            self._item("failed", offset)

    def _findings(self, ev: dict[str, Any], offset: int) -> None:
        for warning in as_list(ev.get("warnings")):
            if isinstance(warning, dict):
                self._item("warnings", offset)
        for hit in as_list(as_dict(ev.get("dlp")).get("hits")):
            if isinstance(hit, dict):
                self._item("dlp", offset)

    def merge(self, later: RunPart) -> None:
        """Add the part of the same segment that follows this one (the lines appended since)."""
        self.summary.merge(later.summary)
        self.events += later.events
        for section in LISTS:
            self.counts[section] += later.counts[section]
            kept = self.offsets[section]
            kept.extend(later.offsets[section][: OFFSET_CAP - len(kept)])
        for key, (offset, stats) in later.hosts.items():
            known = self.hosts.get(key)
            if known is None:
                self.hosts[key] = (offset, stats)
            else:
                known[1].merge(stats)

    def to_record(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "summary": self.summary.to_dict(),
            "hosts": [
                [
                    key,
                    offset,
                    *(getattr(s, n) for n in _HOST_INTS),
                    format(s.latency_exact, "x"),
                    repr(s.latency_special),
                ]
                for key, (offset, s) in self.hosts.items()
            ],
            "counts": self.counts,
            "offsets": self.offsets,
        }


def _is_int(value: object) -> bool:
    return value.__class__ is int


def _is_count(value: object) -> bool:
    return value.__class__ is int and value >= 0  # type: ignore[operator]


def _summary_from(data: object, run: str) -> RunSummary | None:
    """A RunSummary from a cached record, or None unless every field has its own type."""
    if not isinstance(data, dict) or data.keys() != _SUMMARY_FIELDS.keys() or data.get("run") != run:
        return None
    for name, kind in _SUMMARY_FIELDS.items():
        value = data[name]
        if kind == "int":
            ok = _is_int(value)
        elif kind == "float":
            ok = value.__class__ is float or _is_int(value)
        elif kind == "float | None":
            ok = value is None or value.__class__ is float or _is_int(value)
        elif kind == "str | None":
            ok = value is None or isinstance(value, str)
        elif kind == "str":
            ok = isinstance(value, str)
        else:  # the tallies: dict[str, int]
            ok = isinstance(value, dict) and all(_is_int(v) for v in value.values())
        if not ok:
            return None
    return RunSummary.from_dict(data)


def _host_from(row: object, limit: int) -> tuple[str, int, HostStats] | None:
    if not isinstance(row, list) or len(row) != 11:
        return None
    key, offset, *numbers, exact, special = row
    if not isinstance(key, str) or not _is_count(offset) or offset >= limit:
        return None
    if not all(_is_int(n) for n in numbers) or any(n < 0 for i, n in enumerate(numbers) if i != 4 and i != 5):
        return None
    if not isinstance(exact, str) or len(exact) > _MAX_EXACT_DIGITS or special not in _SPECIALS:
        return None
    try:
        latency_exact = int(exact, 16)
    except ValueError:
        return None
    stats = HostStats(key, *numbers, latency_exact=latency_exact, latency_special=_SPECIALS[special])
    return key, offset, stats


def part_from_record(data: object, run: str, limit: int) -> RunPart | None:
    """The inverse of `RunPart.to_record`, checked field by field (offsets below `limit`, the bytes
    the record covers); None for anything else."""
    if not isinstance(data, dict) or data.keys() != {"events", "summary", "hosts", "counts", "offsets"}:
        return None
    summary = _summary_from(data["summary"], run)
    counts, offsets, hosts = data["counts"], data["offsets"], data["hosts"]
    if summary is None or not _is_count(data["events"]) or not isinstance(hosts, list):
        return None
    if (
        not isinstance(counts, dict)
        or counts.keys() != set(LISTS)
        or not all(map(_is_count, counts.values()))
    ):
        return None
    if not isinstance(offsets, dict) or offsets.keys() != set(LISTS):
        return None
    part = RunPart(run)
    for section in LISTS:
        kept = offsets[section]
        if not isinstance(kept, list) or len(kept) != min(counts[section], OFFSET_CAP):
            return None
        previous = 0
        for offset in kept:
            if not _is_int(offset) or not previous <= offset < limit:
                return None
            previous = offset
        part.offsets[section] = kept
    if counts["timeline"] > data["events"]:
        return None
    for row in hosts:
        host = _host_from(row, limit)
        if host is None or host[0] in part.hosts:
            return None
        part.hosts[host[0]] = (host[1], host[2])
    part.summary, part.events, part.counts = summary, data["events"], counts
    return part


# --- reading the tape -----------------------------------------------------------------------------


def count_part(
    path: Path,
    run: str,
    start: int = 0,
    *,
    sealed: bool,
    progress: Callable[[int], None] | None = None,
    digest: Any = None,
) -> tuple[RunPart, int]:
    """(the run's aggregates over the complete lines of a segment from byte `start`, where those lines
    end): its lines are found by a byte search for `"run":<id>` and parsed (what runs.run_events
    yields). `digest` (a hashlib object), when given, is fed the bytes from `start` to that end."""
    part = RunPart(run)
    needle = b'"run":' + orjson.dumps(run)
    end = start
    for base, data in segment_chunks(path, sealed=sealed, start=start):
        stop = data.rfind(b"\n") + 1
        begin = max(start - base, 0)
        if digest is not None and stop > begin:
            with memoryview(data) as view:
                digest.update(view[begin:stop])
        end = max(end, base + stop)
        for offset, line in segment_lines_holding(data, needle, begin):
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict) and event.get("run") == run:
                part.add(event, base + offset)
                if progress is not None and part.events % 10_000 == 0:
                    progress(part.events)
    return part, end


# --- the cache ------------------------------------------------------------------------------------


def entry_path(cache_dir: Path, segment: str, run: str) -> Path:
    digest = hashlib.blake2b(run.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return cache_dir / f"{segment}{ENTRY_MARK}{digest}"


def _read_entry(path: Path) -> Any:
    """The entry's JSON when it is a regular file of this user that nobody else can write, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (
            not stat_mod.S_ISREG(st.st_mode)
            or st.st_uid != os.getuid()
            or st.st_mode & 0o077
            or st.st_size > _MAX_ENTRY_BYTES
        ):
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(_MAX_ENTRY_BYTES + 1)
        return orjson.loads(raw)
    except (OSError, orjson.JSONDecodeError):
        return None
    finally:
        os.close(fd)


def storable(part: RunPart) -> bool:
    """Whether JSON holds the part exactly: it has no inf or nan (orjson would write null)."""
    return all(
        v is None or v.__class__ is int or math.isfinite(v)
        for v in (part.summary.started, part.summary.ended, part.summary.cost_usd)
    )


def _store(path: Path, key: dict[str, Any], part: RunPart | None) -> None:
    if part is not None and not storable(part):
        return  # not cached
    record = {"version": CACHE_VERSION, **key, "part": part.to_record() if part is not None else None}
    try:
        data = orjson.dumps(record)
    except TypeError:  # e.g. a byte total past 64 bits on a hostile tape: not cached
        return
    try:
        ensure_private_dir(path.parent)
        write_private_file(path, data)
    except OSError:
        pass  # a read-only home only costs the next report a rescan


def _cached(
    path: Path, key: dict[str, Any], run: str, limit: int
) -> tuple[dict[str, Any], RunPart | None] | None:
    """(the record, its part or None when the run is not in the segment) if the entry matches `key`."""
    record = _read_entry(path)
    if not isinstance(record, dict) or record.get("version") != CACHE_VERSION or record.get("run") != run:
        return None
    if any(record.get(k) != v for k, v in key.items()):
        return None
    if record.get("part") is None:
        return record, None
    part = part_from_record(record["part"], run, limit)
    return (record, part) if part is not None else None


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class SegmentPart:
    """A run's part of one segment, and whether it came from the cache."""

    __slots__ = ("cached", "index", "part", "path")

    def __init__(self, index: int, path: Path, part: RunPart, cached: bool) -> None:
        self.index, self.path, self.part, self.cached = index, path, part, cached


def run_parts(
    tape_dir: Path,
    run: str,
    cache_dir: Path | None,
    *,
    trust_cache: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[SegmentPart]:
    """The run's part of every segment that holds it, in tape order. Cached entries are used when
    `trust_cache` and written (when `cache_dir` is given) for whatever had to be counted. Sealed
    segments without a usable entry are counted by worker processes (countworker.py) when there are
    cores and bytes enough, while this process counts the open segment."""
    from failcore.report.countworker import counting_workers, part_from_answer

    segments = list_segments(Path(tape_dir))
    found: dict[int, tuple[RunPart, bool] | None] = {}
    to_count: list[tuple[int, Path, Path | None, tuple[int, int]]] = []
    counted = 0

    def counting(events: int) -> None:
        if progress is not None:
            progress(counted + events)

    for index, path in enumerate(segments[:-1]):
        entry = entry_path(cache_dir, path.name, run) if cache_dir is not None else None
        before = _stat(path)
        if before is None:
            continue
        hit = (
            _sealed_cached(path, run, entry, before, counting) if entry is not None and trust_cache else _MISS
        )
        if hit is _MISS:
            to_count.append((index, path, entry, before))
        else:
            found[index] = hit  # type: ignore[assignment]
    with counting_workers(len(to_count), sum(before[0] for *_, before in to_count), run) as workers:
        if workers is not None:
            workers.start([(index, str(path)) for index, path, _, _ in to_count])
        if segments:
            path = segments[-1]
            entry = entry_path(cache_dir, path.name, run) if cache_dir is not None else None
            found[len(segments) - 1] = _open_part(path, run, entry, trust_cache, counting)
        answers = workers.answers() if workers is not None else {}
        for index, path, entry, before in to_count:
            answer = part_from_answer(answers.get(index), run, before[0])
            if answer is None:
                part: RunPart | None = count_part(path, run, 0, sealed=True, progress=counting)[0]
            else:
                part = answer[0]
            if part is not None and not part.events:
                part = None
            if entry is not None and _stat(path) == before:
                key = {"run": run, "segment": path.name, "size": before[0], "mtime_ns": before[1]}
                _store(entry, key, part)
            found[index] = (part, False) if part is not None else None
            counted += part.events if part is not None else 0
            counting(0)
    out = []
    for index in sorted(found):
        result = found[index]
        if result is not None:
            out.append(SegmentPart(index, segments[index], *result))
    return out


_MISS: Final = object()


def _sealed_cached(
    path: Path, run: str, entry: Path, before: tuple[int, int], progress: Callable[[int], None]
) -> tuple[RunPart, bool] | object | None:
    """A sealed segment's part from its entry (None: the run is not in it), or _MISS."""
    key = {"segment": path.name, "size": before[0], "mtime_ns": before[1]}
    cached = _cached(entry, key, run, before[0])
    if cached is not None:
        return (cached[1], True) if cached[1] is not None else None
    # The segment was the open one when last counted (it was sealed by a rotation since): its
    # entry covers a prefix, so only the lines appended after it are counted.
    prefix = _open_cached(entry, path.name, run, path)
    if prefix is None:
        return _MISS
    start, part, _ = prefix
    added, _ = count_part(path, run, start, sealed=True, progress=progress)
    if part is None:
        part = added
    else:
        part.merge(added)
    if _stat(path) == before:
        _store(entry, {"run": run, **key}, part if part.events else None)
    return (part, True) if part.events else None


def _open_part(
    path: Path, run: str, entry: Path | None, trust: bool, progress: Callable[[int], None]
) -> tuple[RunPart, bool] | None:
    """The open segment's part: read, never mapped (see runs.segment_chunks), from where its cached
    prefix ends when the prefix's digest still matches."""
    cached = _open_cached(entry, path.name, run, path) if entry is not None and trust else None
    if cached is not None:
        start, part, digest = cached
    else:
        start, part, digest = 0, None, hashlib.blake2b(digest_size=32)
    added, end = count_part(path, run, start, sealed=False, progress=progress, digest=digest)
    from_cache = cached is not None
    if part is None:
        part = added
    else:
        part.merge(added)
    if entry is not None and (end != start or not from_cache):
        key = {"run": run, "segment": path.name, "end_offset": end, "blake2b": digest.hexdigest()}
        _store(entry, key, part if part.events else None)
    return (part, from_cache) if part.events else None


def _prefix_digest(path: Path, end: int) -> Any:
    """A BLAKE2b fed the segment's first `end` bytes (read, not mapped), or None when the segment is
    shorter or unreadable now."""
    digest = hashlib.blake2b(digest_size=32)
    left = end
    try:
        with open(path, "rb", buffering=0) as f:
            while left:
                piece = f.read(min(left, _HASH_CHUNK))
                if not piece:
                    return None
                digest.update(piece)
                left -= len(piece)
    except OSError:
        return None
    return digest


def _open_cached(entry: Path, segment: str, run: str, path: Path) -> tuple[int, RunPart | None, Any] | None:
    """(where the cached prefix ends, its part, a digest fed that prefix) when the entry's digest
    matches the segment's bytes."""
    record = _read_entry(entry)
    if not isinstance(record, dict) or record.get("segment") != segment:
        return None
    start, expected = record.get("end_offset"), record.get("blake2b")
    if not _is_count(start) or not isinstance(expected, str):
        return None
    digest = _prefix_digest(path, start)
    if digest is None or digest.hexdigest() != expected:
        return None
    if start:  # the prefix ends a line
        try:
            with open(path, "rb", buffering=0) as f:
                if os.pread(f.fileno(), 1, start - 1) != b"\n":
                    return None
        except OSError:
            return None
    cached = _cached(entry, {"segment": segment, "end_offset": start, "blake2b": expected}, run, start)
    if cached is None:
        return None
    return start, cached[1], digest


# --- the report from the parts --------------------------------------------------------------------

# Where each list of the page is, by section.
_REPORT_LISTS: Final = {
    "timeline": "timeline",
    "tools": "tool_calls",
    "blocked": "blocked",
    "warned": "warned",
    "failed": "failed",
    "warnings": "warnings",
    "dlp": "dlp_hits",
    "llm": "llm_calls",
}


def fill_report(report: RunReport, parts: list[SegmentPart], add: Callable[[dict[str, Any]], None]) -> bool:
    """Fill `report` (bounded by its max_events < OFFSET_CAP) from the run's parts: its counts from the
    aggregates, its lists by passing `add` (the collector) only the lines they show, in tape order.

    Feeding the collector a subsequence of the run that holds the first max_events items of every list
    fills each list exactly as the whole run would (every item before the last one kept is in it), and
    bodies are trimmed against the same budget in the same order (only timeline rows spend it). The
    counts the collector makes of that subsequence are then replaced by the whole run's. False when the
    parts do not match the tape (a line at a cached offset is not the run's, a list comes out short)."""
    limit = report.max_events
    if not 0 < limit < OFFSET_CAP:
        return False
    wanted: dict[int, set[int]] = {}
    overflow: dict[str, tuple[int, int, int]] = {}
    omitted: dict[str, int] = {}
    totals: dict[str, int] = {}
    for rank, section in enumerate(SECTIONS):
        if section == "hosts":
            continue
        total = totals[section] = sum(p.part.counts[section] for p in parts)
        taken = 0
        for p in parts:
            for offset in p.part.offsets[section][: limit + 1 - taken]:
                if taken < limit:
                    wanted.setdefault(p.index, set()).add(offset)
                else:
                    overflow[section] = (p.index, offset, rank)
                taken += 1
            if taken > limit:
                break
        if total > limit:
            if section not in overflow:
                return False
            omitted[section] = total - limit
    hosts: dict[str, HostStats] = {}
    others: set[str] = set()
    for p in parts:
        for key, (offset, stats) in p.part.hosts.items():
            known = hosts.get(key)
            if known is None and key not in others and len(hosts) < limit:
                known = hosts[key] = HostStats(key)
            if known is not None:
                known.merge(stats)
                continue
            if not others:
                overflow["hosts"] = (p.index, offset, SECTIONS.index("hosts"))
            others.add(key)
            omitted["hosts"] = omitted.get("hosts", 0) + stats.requests
    by_index = {p.index: p.path for p in parts}
    for p in parts:  # each part's first and last row must be the run's lines, read or not
        timeline = p.part.offsets["timeline"]
        if timeline and not _feed(p.path, sorted({timeline[0], timeline[-1]}), report.run, lambda ev: None):
            return False
    for index in sorted(wanted):
        if not _feed(by_index[index], sorted(wanted[index]), report.run, add):
            return False
    for section, name in _REPORT_LISTS.items():
        if len(getattr(report, name)) != min(totals[section], limit):
            return False
    summary = RunSummary(report.run)
    for p in parts:
        summary.merge(p.part.summary)
    report.summary = summary
    report.hosts = hosts
    report.events_read = sum(p.part.events for p in parts)
    report.omitted = {s: omitted[s] for s in sorted(omitted, key=overflow.__getitem__)}
    return True


def _feed(path: Path, offsets: list[int], run: str, add: Callable[[dict[str, Any]], None]) -> bool:
    """Parse the run's lines that start at `offsets` of the segment and pass them to `add`; False when
    one is not a complete line of the run there. Read with pread, never mapped (see
    runs.segment_chunks): the segment may be the one being written."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        for offset in offsets:
            line = _line_at(fd, offset)
            if line is None:
                return False
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                return False
            if not isinstance(event, dict) or event.get("run") != run:
                return False
            add(event)
    finally:
        os.close(fd)
    return True


def _line_at(fd: int, offset: int) -> bytes | None:
    """The complete line that starts at byte `offset` (after a newline, or at 0), without its newline;
    None when there is none."""
    size = 8192
    at = offset - 1 if offset else 0
    while True:
        try:
            data = os.pread(fd, size, at)
        except OSError:
            return None
        if offset:
            if data[:1] != b"\n":
                return None
            data = data[1:]
        end = data.find(b"\n")
        if end != -1:
            return data[:end]
        if len(data) + (1 if offset else 0) < size:
            return None  # the file ends first: a line still being written
        size *= 4
