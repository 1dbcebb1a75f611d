"""Incremental scanning of streamed bodies (SSE, chunked uploads), and scanning of bulk bodies.

`scan_bulk` is what the past-cap scan (failcore.evidence.pastcap) runs on each batch of a large body.
Measured on the rules shipped (benchmarks/bulk_bench.py): a full scan of incompressible bytes costs
~30 ms of CPU per MiB (three Hyperscan passes, over the raw bytes and the JSON- and percent-decoded
views, which random bytes always produce), more than the proxy spends moving them; Hyperscan's stream
mode over the same database was slower still on such bytes. Secrets are text, so in a binary buffer
only the runs of text need the rules: finding them is a byte translation and a substring search in the
proxy's own thread, and one Hyperscan pass over the bytes in place in the past-cap scan process
(failcore.evidence.pastcapworker), the same windows either way.
"""

from __future__ import annotations

import functools
import threading
from bisect import bisect_right
from dataclasses import replace
from typing import Any, Literal

from failcore.dlp import regex_backend as rx
from failcore.dlp.engine import DlpEngine
from failcore.dlp.model import Hit


class StreamScanner:
    """Scans a byte stream chunk by chunk, keeping `window` bytes of history.

    Each end offset in the stream is "committed" exactly once: a scan reports only hits whose end falls
    between the previous commit point and `guard` bytes before the data seen so far. A secret still
    growing at the edge of a chunk is therefore reported by a later scan that sees all of it, and a
    secret seen by two overlapping scans is reported by only one of them. Secrets longer than
    `window - guard` bytes can be missed.
    """

    def __init__(self, engine: DlpEngine, window: int = 4096) -> None:
        if window < 256:
            raise ValueError("window must be at least 256 bytes")
        self._engine = engine
        self._window = window
        self._guard = min(512, window // 4)
        self._tail = b""
        self._tail_offset = 0
        self._committed = 0

    def feed(self, chunk: bytes) -> list[Hit]:
        """Hits newly completed by this chunk, with offsets absolute in the stream."""
        buffer = self._tail + chunk
        commit_to = self._tail_offset + len(buffer) - self._guard
        hits = self._scan(buffer, commit_to)
        keep = min(len(buffer), self._window)
        self._tail_offset += len(buffer) - keep
        self._tail = buffer[len(buffer) - keep :]
        return hits

    def finish(self) -> list[Hit]:
        """Hits in the not yet committed end of the stream."""
        hits = self._scan(self._tail, self._tail_offset + len(self._tail))
        self._tail_offset += len(self._tail)
        self._tail = b""
        return hits

    def _scan(self, buffer: bytes, commit_to: int) -> list[Hit]:
        if commit_to <= self._committed:
            return []
        found: list[Hit] = []
        for hit in self._engine.scan(buffer):
            absolute_end = hit.end + self._tail_offset
            if self._committed < absolute_end <= commit_to:
                found.append(replace(hit, start=hit.start + self._tail_offset, end=absolute_end))
        self._committed = commit_to
        return found


# --- Bulk bodies: scan where text is, not every byte of a binary body -------------------------------

# Bytes of text: printable ASCII and \t \n \r. Every rule matches text; the decoded views (JSON and
# percent escapes, base64/hex runs) are made of it too.
_TEXT_BYTES = frozenset([*range(0x20, 0x7F), 0x09, 0x0A, 0x0D])
_ISLAND_TABLE = bytes(0x61 if byte in _TEXT_BYTES else 0x20 for byte in range(256))
# A run of text shorter than this inside binary bytes is not scanned (the shortest credential the
# built-in rules know is 12 bytes; a run this short holds at most a short PII value).
MIN_ISLAND = 10
_ISLAND_NEEDLE = b"a" * MIN_ISLAND
# Runs of text closer than this are scanned as one window (a rule's context may span a few binary
# bytes, e.g. the key id and the secret of aws-secret-key-near-key-id).
ISLAND_GAP = 64
# Past this many windows, or this share of the buffer in windows, the buffer is scanned whole.
MAX_WINDOWS = 128
# One byte in this many is looked at first: a buffer whose sample is all text is scanned whole (the
# engine's own pipeline; windows would only save work on binary bytes).
SAMPLE_STRIDE = 61
SAMPLE_HEAD = 64 * SAMPLE_STRIDE
MAX_WINDOW_SHARE = 0.5
# The same byte class for Hyperscan (what _TEXT_BYTES holds).
_TEXT_CLASS = r"[\t\n\r\x20-\x7e]"
_NOT_TEXT_CLASS = r"[^\t\n\r\x20-\x7e]"

Buffer = bytes | bytearray | memoryview


class _Windows:
    """The windows of one buffer, from its runs of text in order: each run with one byte of context
    on either side, merged with the window before it when less than ISLAND_GAP bytes apart."""

    __slots__ = ("covered", "limit", "size", "spans")

    def __init__(self, size: int) -> None:
        self.size = size
        self.limit = MAX_WINDOW_SHARE * size
        self.spans: list[tuple[int, int]] = []
        self.covered = 0

    def add(self, run_start: int, run_end: int) -> bool:
        """Add one run; True when the buffer is now better scanned whole (too many windows, or too
        much of it in windows)."""
        start = max(0, run_start - 1)
        stop = min(self.size, run_end + 1)
        spans = self.spans
        if spans and start - spans[-1][1] < ISLAND_GAP:
            self.covered -= spans[-1][1] - spans[-1][0]
            start = spans.pop()[0]
        spans.append((start, stop))
        self.covered += stop - start
        return len(spans) > MAX_WINDOWS or self.covered > self.limit


def text_windows(buffer: Buffer, *, hyperscan: bool = False) -> list[tuple[int, int]] | None:
    """Where a binary buffer holds text: the runs of at least MIN_ISLAND text bytes, merged when less
    than ISLAND_GAP bytes apart, each with one byte of context on either side. None when the buffer is
    mostly text (or its text is too scattered to be worth windows): scan it whole.

    With `hyperscan`, one Hyperscan pass over the bytes as they are (a slot of shared memory is not
    copied), with Python work per run of text only; without Hyperscan installed, or should its runs
    come out of order, the same windows from a translated copy (`_windows_by_translation`). Only for a
    thread that has its GIL to itself (the past-cap scan process): the match callback takes the GIL
    back once per run, and in the proxy, with its event loop busy, each of those waits (commit f43551b
    measured the proxy's scan thread falling behind with it: 8 of 14 bodies scanned whole, not 11-12)."""
    size = len(buffer)
    if _sample_is_text(buffer):
        return None  # every sampled byte is text: scan it whole without mapping it all
    if hyperscan and size >= MIN_ISLAND:  # (a shorter one holds no run; scanned whole if all text)
        windows = _windows_by_hyperscan(buffer, size)
        if windows is not False:
            return windows
    return _windows_by_translation(bytes(buffer))


def _sample_is_text(buffer: Buffer) -> bool:
    """Whether every SAMPLE_STRIDE-th byte of `buffer` is text. The sample's first SAMPLE_HEAD bytes
    first: a binary buffer has a sampled byte that is not text there, and the strided copy of a whole
    view of shared memory (~0.09 ms per MiB) is then not made."""
    if bytes(buffer[:SAMPLE_HEAD:SAMPLE_STRIDE]).translate(_ISLAND_TABLE).find(b" ") >= 0:
        return False
    return bytes(buffer[::SAMPLE_STRIDE]).translate(_ISLAND_TABLE).find(b" ") < 0


def _windows_by_translation(buffer: bytes) -> list[tuple[int, int]] | None:
    """text_windows with two C passes of CPython (translate, find): ~1.5 ms per MiB of random bytes on
    a 2-core AMD EPYC, plus the translated copy's allocation."""
    mapped = buffer.translate(_ISLAND_TABLE)
    if mapped.find(b" ") < 0:
        return None  # all text
    windows = _Windows(len(buffer))
    position = mapped.find(_ISLAND_NEEDLE)
    while position >= 0:
        end = mapped.find(b" ", position + MIN_ISLAND)
        end = len(buffer) if end < 0 else end
        if windows.add(position, end):
            return None
        position = mapped.find(_ISLAND_NEEDLE, end)
    return windows.spans


_hs_runs_local = threading.local()


@functools.cache
def _run_database(min_island: int) -> Any:
    """A Hyperscan database reporting each run of at least `min_island` text bytes once, where it ends
    (at the byte after it, or at the end of the buffer), with its leftmost start. None: no Hyperscan."""
    hs = rx.hyperscan_module()
    if hs is None:
        return None
    expressions = [f"{_TEXT_CLASS}{{{min_island},}}{_NOT_TEXT_CLASS}", f"{_TEXT_CLASS}{{{min_island},}}\\z"]
    try:
        database = hs.Database(mode=hs.HS_MODE_BLOCK)
        database.compile(
            expressions=[e.encode("ascii") for e in expressions],
            ids=[0, 1],
            elements=2,
            flags=[hs.HS_FLAG_SOM_LEFTMOST] * 2,
        )
    except Exception:  # (a build of Hyperscan that refuses it: the translated copy does the same)
        return None
    return database


def _scratch_for(database: Any) -> Any:
    """This thread's scratch space for `database` (a scratch serves one scan at a time; the proxy's
    past-cap worker thread and its tape writer may both scan)."""
    scratch = getattr(_hs_runs_local, "scratch", None)
    if scratch is None or _hs_runs_local.database is not database:
        scratch = _hs_runs_local.scratch = rx.hyperscan_module().Scratch(database)
        _hs_runs_local.database = database
    return scratch


def _windows_by_hyperscan(buffer: Buffer, size: int) -> list[tuple[int, int]] | Literal[False] | None:
    """text_windows from one Hyperscan pass: ~1.2 ms per MiB of random bytes on the same CPU, and no
    copy. False: no Hyperscan here, or its runs did not come in order (the caller translates)."""
    database = _run_database(MIN_ISLAND)
    if database is None:
        return False
    scratch = _scratch_for(database)
    windows = _Windows(size)
    state = [False, -1]  # [whole, end of the last run]

    def on_run(pattern: int, start: int, end: int, _flags: int, _context: object) -> bool:
        run_end = end if pattern == 1 else end - 1
        if start < state[1]:
            state[1] = -2  # out of order: not trusted
            return True
        state[1] = run_end
        if windows.add(start, run_end):
            state[0] = True
            return True
        return False

    try:
        database.scan(buffer, match_event_handler=on_run, scratch=scratch)
    except rx.hyperscan_module().ScanTerminated:
        pass
    if state[1] == -2:
        return False
    return None if state[0] else windows.spans


# Joins the windows of one buffer into one text to scan: no rule, escape or base64 run crosses it.
SEPARATOR = b"\x00\n\x00"


def scan_bulk(engine: DlpEngine, buffer: Buffer, *, hyperscan: bool = False) -> list[Hit]:
    """`engine.scan(buffer)` for a piece of a bulk body: a text buffer is scanned whole; in a binary one
    (an archive, model weights, media) only its runs of text are, joined into one scan with the
    engine's full pipeline (decoded views included). Offsets are into `buffer`, which may be a view of
    shared memory: only its windows (or, for text, all of it) are copied. `hyperscan`: see
    text_windows (the past-cap scan process sets it)."""
    windows = text_windows(buffer, hyperscan=hyperscan)
    if windows is None:
        return engine.scan(bytes(buffer))
    if not windows:
        return []
    joined = SEPARATOR.join([buffer[start:stop] for start, stop in windows])
    offsets: list[int] = []
    position = 0
    for start, stop in windows:
        offsets.append(position)
        position += stop - start + len(SEPARATOR)
    hits: list[Hit] = []
    for hit in engine.scan(joined):
        index = bisect_right(offsets, hit.start) - 1
        start, stop = windows[index]
        if hit.end - offsets[index] > stop - start:
            continue  # it spans a separator: those bytes are not in the body
        shift = start - offsets[index]
        hits.append(replace(hit, start=hit.start + shift, end=hit.end + shift))
    return hits
