"""Incremental scanning of streamed bodies (SSE, chunked uploads), and scanning of bulk bodies.

`scan_bulk` is what the past-cap scan (failcore.evidence.pastcap) runs on each batch of a large body.
Measured on the rules shipped (benchmarks/bulk_bench.py): a full scan of incompressible bytes costs
~30 ms of CPU per MiB (three Hyperscan passes, over the raw bytes and the JSON- and percent-decoded
views, which random bytes always produce), more than the proxy spends moving them; Hyperscan's stream
mode over the same database was slower still on such bytes. Secrets are text, so in a binary buffer
only the runs of text need the rules: finding them is a byte translation and a substring search.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import replace

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
MAX_WINDOW_SHARE = 0.5


def text_windows(buffer: bytes) -> list[tuple[int, int]] | None:
    """Where a binary buffer holds text: the runs of at least MIN_ISLAND text bytes, merged when less
    than ISLAND_GAP bytes apart, each with one byte of context on either side. None when the buffer is
    mostly text (or its text is too scattered to be worth windows): scan it whole.

    Two C passes (translate, find); Python work per run of text only."""
    size = len(buffer)
    if buffer[::SAMPLE_STRIDE].translate(_ISLAND_TABLE).find(b" ") < 0:
        return None  # every sampled byte is text: scan it whole without mapping it all
    mapped = buffer.translate(_ISLAND_TABLE)
    if mapped.find(b" ") < 0:
        return None  # all text
    windows: list[tuple[int, int]] = []
    covered = 0
    limit = MAX_WINDOW_SHARE * size
    position = mapped.find(_ISLAND_NEEDLE)
    while position >= 0:
        end = mapped.find(b" ", position + MIN_ISLAND)
        end = size if end < 0 else end
        start = max(0, position - 1)
        stop = min(size, end + 1)
        if windows and start - windows[-1][1] < ISLAND_GAP:
            covered -= windows[-1][1] - windows[-1][0]
            start = windows.pop()[0]
        windows.append((start, stop))
        covered += stop - start
        if len(windows) > MAX_WINDOWS or covered > limit:
            return None
        position = mapped.find(_ISLAND_NEEDLE, end)
    return windows


# Joins the windows of one buffer into one text to scan: no rule, escape or base64 run crosses it.
SEPARATOR = b"\x00\n\x00"


def scan_bulk(engine: DlpEngine, buffer: bytes) -> list[Hit]:
    """`engine.scan(buffer)` for a piece of a bulk body: a text buffer is scanned whole; in a binary one
    (an archive, model weights, media) only its runs of text are, joined into one scan with the
    engine's full pipeline (decoded views included). Offsets are into `buffer`."""
    windows = text_windows(buffer)
    if windows is None:
        return engine.scan(buffer)
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
