"""Incremental scanning of streamed bodies (SSE, chunked uploads)."""

from __future__ import annotations

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
