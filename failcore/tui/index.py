"""A compact, columnar index of a tape: enough per line to list runs and events without keeping bodies.

One pass over the raw lines (each read by failcore.tui.lines, bodies skipped) records each line's byte
position and the few fields the lists show, in typed arrays; per-run counts are runs.RunSummary, the
aggregator `failcore list` uses, kept per chunk and merged.

Sealed segments (every one but the last) are immutable, so their index parts are cached on disk keyed
by segment name, size and mtime (failcore.tui.cache says where); the segment being written is always
scanned, and `TapeIndexer.scan` resumes from the last complete line, which is also how a live tape is
followed.
"""

from __future__ import annotations

import bisect
import math
import os
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from failcore.paths import ensure_private_dir, write_private_file
from failcore.runs import RunSummary
from failcore.tape.reader import GENESIS_PREV, line_hash, list_segments

# Re-exported: what callers imported from here before the line reader and the cache had modules.
from failcore.tui.cache import default_cache_dir, prepare_cache_dir, prune_view_caches
from failcore.tui.lines import (
    ChainStatus,
    as_integer,
    as_number,
    chain_status,
    event_label,
    extract_fields,
    parse_whole,
)

__all__ = [
    "ChainStatus",
    "EventRow",
    "IndexChunk",
    "TapeIndex",
    "TapeIndexer",
    "build_index",
    "chain_status",
    "default_cache_dir",
    "event_label",
    "extract_fields",
    "prepare_cache_dir",
    "prune_view_caches",
]

KINDS: Final = (
    "network",
    "websocket",
    "policy",
    "internal_error",
    "run_start",
    "run_end",
    "checkpoint",
    "dropped",
    "tool",
    "fs",
    "exec",
    "connect",
    "other",
)
DECISIONS: Final = ("", "ALLOW", "WARN", "BLOCK")
OUTCOMES: Final = ("", "ok", "BLOCKED", "FAIL")
LISTED_KINDS: Final = frozenset(k for k in KINDS if k != "checkpoint")

CACHE_VERSION: Final = 3  # 2: per-run stats are runs.RunSummary; 3: runtime kinds and their counts
_READ_BUFFER: Final = 1 << 20
_MISSING_INT: Final = -1
_KIND_CODES: Final = {k: i for i, k in enumerate(KINDS)}
_DECISION_CODES: Final = {d: i for i, d in enumerate(DECISIONS)}
_OUTCOME_CODES: Final = {o: i for i, o in enumerate(OUTCOMES)}
_FLAG_WOULD_BLOCK: Final = 1
# Column name → array typecode. Missing numbers are -1 (ints) or NaN (floats), never 0.
_COLUMNS: Final = (
    ("offset", "q"),
    ("length", "q"),
    ("seq", "q"),
    ("ts", "d"),
    ("kind", "B"),
    ("decision", "B"),
    ("outcome", "B"),
    ("flags", "B"),
    ("status", "l"),
    ("latency", "d"),
    ("tokens_in", "q"),
    ("tokens_out", "q"),
    ("cost", "d"),
    ("dlp", "l"),
    ("run", "L"),
    ("host", "L"),
    ("method", "L"),
    ("path_end", "Q"),
)


@dataclass(frozen=True, slots=True)
class EventRow:
    """One index row, decoded for display."""

    position: int
    segment: str
    offset: int
    length: int
    seq: int
    ts: float | None
    kind: str
    run: str
    decision: str
    outcome: str
    would_block: bool
    status: int | None
    latency_ms: float | None
    host: str
    method: str
    path: str
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    dlp_hits: int | None

    @property
    def tokens(self) -> int | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)

    @property
    def is_failure(self) -> bool:
        return self.outcome == "FAIL" or self.kind == "internal_error"


class _Interner:
    def __init__(self, names: list[str] | None = None) -> None:
        self.names: list[str] = list(names or [""])
        self._ids = {name: i for i, name in enumerate(self.names)}

    def id(self, name: str) -> int:
        found = self._ids.get(name)
        if found is None:
            found = self._ids[name] = len(self.names)
            self.names.append(name)
        return found


class IndexChunk:
    """Index rows of one stretch of one segment, with its own string tables (self-contained for caching)."""

    def __init__(self, segment: str) -> None:
        self.segment = segment
        self.columns: dict[str, array[Any]] = {name: array(code) for name, code in _COLUMNS}
        self.paths = bytearray()
        self.runs = _Interner()
        self.hosts = _Interner()
        self.methods = _Interner()
        self.stats: dict[str, RunSummary] = {}
        self.end_offset = 0

    def __len__(self) -> int:
        return len(self.columns["offset"])

    def add(self, offset: int, length: int, fields: dict[str, Any]) -> None:
        c = self.columns
        kind = str(fields.get("kind"))
        run = fields.get("run")
        run_name = run if isinstance(run, str) else ""
        target = fields.get("target") if isinstance(fields.get("target"), dict) else {}
        llm = fields.get("llm") if isinstance(fields.get("llm"), dict) else {}
        usage = llm.get("usage") if isinstance(llm.get("usage"), dict) else {}
        cost = llm.get("cost") if isinstance(llm.get("cost"), dict) else {}
        dlp = fields.get("dlp")
        hits = dlp.get("hits") if isinstance(dlp, dict) else None
        ts = as_number(fields.get("ts_start")) or as_number(fields.get("ts"))
        if kind == "run_end":  # it happened when the run ended, not when it started
            ts = as_number(fields.get("ts_end")) or ts
        status = as_integer(fields.get("status"))
        latency = as_number(fields.get("latency_ms"))
        tokens_in = as_integer(usage.get("input_tokens"))
        tokens_out = as_integer(usage.get("output_tokens"))
        usd = as_number(cost.get("usd"))
        decision = fields.get("decision")
        outcome = fields.get("outcome")
        c["offset"].append(offset)
        c["length"].append(length)
        c["seq"].append(as_integer(fields.get("seq")) or 0)
        c["ts"].append(math.nan if ts is None else ts)
        c["kind"].append(_KIND_CODES.get(kind, _KIND_CODES["other"]))
        c["decision"].append(_DECISION_CODES.get(decision, 0) if isinstance(decision, str) else 0)
        c["outcome"].append(_OUTCOME_CODES.get(outcome, 0) if isinstance(outcome, str) else 0)
        c["flags"].append(_FLAG_WOULD_BLOCK if fields.get("would_block") is True else 0)
        c["status"].append(_MISSING_INT if status is None else status)
        c["latency"].append(math.nan if latency is None else latency)
        c["tokens_in"].append(_MISSING_INT if tokens_in is None else tokens_in)
        c["tokens_out"].append(_MISSING_INT if tokens_out is None else tokens_out)
        c["cost"].append(math.nan if usd is None else usd)
        c["dlp"].append(len(hits) if isinstance(hits, list) else _MISSING_INT)
        c["run"].append(self.runs.id(run_name))
        c["host"].append(self.hosts.id(str(target.get("host") or "")))
        c["method"].append(self.methods.id(str(fields.get("method") or "")))
        self.paths += event_label(fields).encode("utf-8", "replace")
        c["path_end"].append(len(self.paths))
        if run_name:
            summary = self.stats.get(run_name)
            if summary is None:
                summary = self.stats[run_name] = RunSummary(run_name)
            summary.add(fields)

    def row(self, local: int, position: int) -> EventRow:
        c = self.columns
        path_start = c["path_end"][local - 1] if local else 0
        ts = c["ts"][local]
        latency = c["latency"][local]
        cost = c["cost"][local]
        status = c["status"][local]
        tokens_in = c["tokens_in"][local]
        tokens_out = c["tokens_out"][local]
        dlp = c["dlp"][local]
        return EventRow(
            position=position,
            segment=self.segment,
            offset=c["offset"][local],
            length=c["length"][local],
            seq=c["seq"][local],
            ts=None if math.isnan(ts) else ts,
            kind=KINDS[c["kind"][local]],
            run=self.runs.names[c["run"][local]],
            decision=DECISIONS[c["decision"][local]],
            outcome=OUTCOMES[c["outcome"][local]],
            would_block=bool(c["flags"][local] & _FLAG_WOULD_BLOCK),
            status=None if status == _MISSING_INT else status,
            latency_ms=None if math.isnan(latency) else latency,
            host=self.hosts.names[c["host"][local]],
            method=self.methods.names[c["method"][local]],
            path=self.paths[path_start : c["path_end"][local]].decode("utf-8", "replace"),
            input_tokens=None if tokens_in == _MISSING_INT else tokens_in,
            output_tokens=None if tokens_out == _MISSING_INT else tokens_out,
            cost_usd=None if math.isnan(cost) else cost,
            dlp_hits=None if dlp == _MISSING_INT else dlp,
        )

    # --- cache (no pickle: a JSON header line, then the raw column bytes) --------------------------

    def to_bytes(self, size: int, mtime_ns: int) -> bytes:
        header = {
            "version": CACHE_VERSION,
            "segment": self.segment,
            "size": size,
            "mtime_ns": mtime_ns,
            "end_offset": self.end_offset,
            "rows": len(self),
            "runs": self.runs.names,
            "hosts": self.hosts.names,
            "methods": self.methods.names,
            "stats": [s.to_dict() for s in self.stats.values()],
            "columns": [
                [name, code, len(self.columns[name]) * array(code).itemsize] for name, code in _COLUMNS
            ],
            "paths": len(self.paths),
        }
        parts = [orjson.dumps(header), b"\n"]
        parts.extend(self.columns[name].tobytes() for name, _ in _COLUMNS)
        parts.append(bytes(self.paths))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, segment: str, size: int, mtime_ns: int) -> IndexChunk | None:
        """The cached chunk, or None when the cache is stale, from another layout or damaged."""
        newline = data.find(b"\n")
        try:
            header = orjson.loads(data[:newline])
        except orjson.JSONDecodeError:
            return None
        expected = {"version": CACHE_VERSION, "segment": segment, "size": size, "mtime_ns": mtime_ns}
        if not isinstance(header, dict) or any(header.get(k) != v for k, v in expected.items()):
            return None
        if [tuple(c[:2]) for c in header.get("columns", [])] != list(_COLUMNS):
            return None
        chunk = cls(segment)
        position = newline + 1
        for name, code, nbytes in header["columns"]:
            column = array(code)
            column.frombytes(data[position : position + nbytes])
            if len(column) != header["rows"]:
                return None
            chunk.columns[name] = column
            position += nbytes
        chunk.paths = bytearray(data[position : position + header["paths"]])
        if len(chunk.paths) != header["paths"]:
            return None
        chunk.runs = _Interner(header["runs"])
        chunk.hosts = _Interner(header["hosts"])
        chunk.methods = _Interner(header["methods"])
        chunk.stats = {s["run"]: RunSummary.from_dict(s) for s in header["stats"]}
        chunk.end_offset = header["end_offset"]
        return chunk


@dataclass(slots=True)
class TapeIndex:
    """All indexed rows of a tape (chunks in tape order) and per-run aggregates.

    Mutated only by `add_chunk` (the UI applies chunks on its own thread), so readers need no lock.
    """

    tape_dir: Path
    chunks: list[IndexChunk] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    runs: dict[str, RunSummary] = field(default_factory=dict)
    run_rows: dict[str, array[int]] = field(default_factory=dict)
    bad_lines: int = 0
    rows: int = 0

    def add_chunk(self, chunk: IndexChunk) -> None:
        if not len(chunk):
            return
        start = self.rows
        self.chunks.append(chunk)
        self.starts.append(start)
        self.rows += len(chunk)
        run_names = chunk.runs.names
        listed = [i for i, k in enumerate(KINDS) if k in LISTED_KINDS]
        kinds = chunk.columns["kind"]
        listed_codes = frozenset(listed)
        for local, run_id in enumerate(chunk.columns["run"]):
            if run_id and kinds[local] in listed_codes:
                name = run_names[run_id]
                rows = self.run_rows.get(name)
                if rows is None:
                    rows = self.run_rows[name] = array("q")
                rows.append(start + local)
        for name, stats in chunk.stats.items():
            known = self.runs.get(name)
            if known is None:
                known = self.runs[name] = RunSummary(name)
            known.merge(stats)

    def row(self, position: int) -> EventRow:
        which = bisect.bisect_right(self.starts, position) - 1
        if which < 0 or position >= self.rows:
            raise IndexError(position)
        return self.chunks[which].row(position - self.starts[which], position)

    def ordered_runs(self) -> list[RunSummary]:
        return sorted(self.runs.values(), key=lambda r: (r.started is None, r.started or 0.0))

    def raw_line(self, row: EventRow) -> bytes:
        with open(self.tape_dir / row.segment, "rb") as f:
            f.seek(row.offset)
            return f.read(row.length)

    def load_event(self, row: EventRow) -> dict[str, Any] | None:
        """The full event of one row, read from the tape by seeking to its offset."""
        return parse_whole(self.raw_line(row))

    def previous_hash(self, position: int) -> bytes:
        """h of the line before `position` in tape order (genesis for the first line)."""
        if position == 0:
            return GENESIS_PREV
        previous = self.row(position - 1)
        return line_hash(self.raw_line(previous))


# --- building ---------------------------------------------------------------------------------


ProgressCallback = Callable[[int, int], None]


@dataclass(slots=True)
class _Cursor:
    segment: str | None = None
    offset: int = 0


class TapeIndexer:
    """Produces index chunks for lines not indexed yet; call `scan()` again to pick up appended lines."""

    def __init__(self, tape_dir: Path, cache_dir: Path | None = None, *, chunk_rows: int = 50_000) -> None:
        self.tape_dir = Path(tape_dir)
        self.cache_dir = cache_dir
        self.chunk_rows = chunk_rows
        self.bad_lines = 0
        self._cursor = _Cursor()

    def scan(self, progress: ProgressCallback | None = None) -> Iterator[IndexChunk]:
        """Chunks of newly complete lines, in tape order. `progress(done_bytes, total_bytes)` as it goes."""
        segments = list_segments(self.tape_dir)
        names = [p.name for p in segments]
        if self._cursor.segment is not None and self._cursor.segment in names:
            segments = segments[names.index(self._cursor.segment) :]
        sizes = {p.name: _stat(p) for p in segments}
        total = sum(s[0] for s in sizes.values() if s is not None)
        done = 0
        for number, path in enumerate(segments):
            stat = sizes[path.name]
            if stat is None:
                continue
            sealed = number < len(segments) - 1
            start = self._cursor.offset if path.name == self._cursor.segment else 0
            if start == 0 and sealed:
                cached = self._load_cached(path.name, *stat)
                if cached is not None:
                    self._cursor = _Cursor(path.name, cached.end_offset)
                    done += stat[0]
                    if progress:
                        progress(done, total)
                    yield cached
                    continue
            # A sealed segment is scanned as one chunk so that it can be cached as it is.
            limit = None if start == 0 and sealed else self.chunk_rows
            for chunk in self._scan_segment(path, start, limit):
                self._cursor = _Cursor(path.name, chunk.end_offset)
                if progress:
                    progress(done + chunk.end_offset - start, total)
                if limit is None:
                    self._store_cached(chunk, *stat)
                yield chunk
            done += stat[0]

    def _scan_segment(self, path: Path, start: int, limit: int | None) -> Iterator[IndexChunk]:
        chunk = IndexChunk(path.name)
        chunk.end_offset = start
        offset = start
        with open(path, "rb", buffering=_READ_BUFFER) as f:
            f.seek(start)
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a line still being written (or cut by a crash): indexed once complete
                raw = line[:-1]
                fields = extract_fields(raw)
                if fields is None:
                    self.bad_lines += 1
                else:
                    chunk.add(offset, len(raw), fields)
                offset += len(line)
                chunk.end_offset = offset
                if limit is not None and len(chunk) >= limit:
                    yield chunk
                    chunk = IndexChunk(path.name)
                    chunk.end_offset = offset
        if len(chunk) or chunk.end_offset != start:
            yield chunk

    def _cache_path(self, segment: str) -> Path | None:
        return self.cache_dir / f"{segment}.idx" if self.cache_dir is not None else None

    def _load_cached(self, segment: str, size: int, mtime_ns: int) -> IndexChunk | None:
        path = self._cache_path(segment)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            return IndexChunk.from_bytes(data, segment, size, mtime_ns)
        except (KeyError, TypeError, ValueError):
            return None

    def _store_cached(self, chunk: IndexChunk, size: int, mtime_ns: int) -> None:
        path = self._cache_path(chunk.segment)
        if path is None:
            return
        try:
            ensure_private_dir(path.parent)
            write_private_file(path, chunk.to_bytes(size, mtime_ns))
        except OSError:
            pass  # a read-only home only costs the next open a rescan


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def build_index(tape_dir: Path, cache_dir: Path | None = None) -> TapeIndex:
    """The whole index at once (for tools and tests; the viewer builds it in a worker)."""
    indexer = TapeIndexer(tape_dir, cache_dir)
    index = TapeIndex(Path(tape_dir))
    for chunk in indexer.scan():
        index.add_chunk(chunk)
    index.bad_lines = indexer.bad_lines
    return index
