"""The one decoder of server-sent events (SSE) and newline-delimited JSON (NDJSON) streams.

Used live, chunk by chunk, by the usage tracker (failcore.llm.usage) and on recorded bodies by the
viewer (failcore.tui.render) and the conversation reader (failcore.conversation). Memory is bounded:
an event or line longer than `max_event_bytes` keeps only its first and last KEEP_EDGE_BYTES, and the
frame says so (`tail` set, `data` empty or partial) instead of growing without limit. Bodies are
attacker-influenced: nothing here interprets them beyond the framing.

SSE framing as the HTML standard defines it for `text/event-stream`, with one simplification for
chunks arriving live: a line ends at LF (a CR before it is dropped); `frames_of_body` also accepts
lone-CR line ends, as the standard does, since a recorded body is whole. Two more differences from the
standard, kept as they were: a leading BOM is not dropped (it becomes part of the first field's name, so
that field is ignored), and a final event that no blank line ended is still dispatched (a cut stream's
last usage report counts). An `event:` name is stripped and cut to 128 characters.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# One SSE event may carry a whole Responses object; beyond this only head and tail are kept.
MAX_EVENT_BYTES = 4 * 1024 * 1024
KEEP_EDGE_BYTES = 64 * 1024


class EdgeBuffer:
    """Byte buffer bounded to ``limit``: past it only the first and last KEEP_EDGE_BYTES survive."""

    __slots__ = ("_head", "_limit", "_tail", "truncated")

    def __init__(self, limit: int) -> None:
        self._head = bytearray()
        self._tail = bytearray()
        self._limit = limit
        self.truncated = False

    def extend(self, data: bytes | bytearray | memoryview) -> None:
        if not self.truncated:
            self._head += data
            if len(self._head) > self._limit:
                self.truncated = True
                self._tail = self._head[-KEEP_EDGE_BYTES:]
                del self._head[KEEP_EDGE_BYTES:]
            return
        self._tail += data
        if len(self._tail) > 2 * KEEP_EDGE_BYTES:
            del self._tail[: len(self._tail) - KEEP_EDGE_BYTES]

    def __len__(self) -> int:
        return len(self._head) + len(self._tail)

    def head(self) -> bytes:
        return bytes(self._head)

    def tail(self) -> bytes:
        return bytes(self._tail)

    def clear(self) -> None:
        self._head.clear()
        self._tail.clear()
        self.truncated = False


@dataclass(slots=True)
class Frame:
    """One decoded SSE event or NDJSON line; ``tail`` is set (and ``data`` partial) when it was oversized."""

    event: str | None
    data: bytes
    tail: bytes | None = None


class _LineDecoder:
    """Splits arriving chunks into lines (kept in a bounded `_line` buffer); `_take_line` decodes one."""

    __slots__ = ("_line",)

    def __init__(self, max_event_bytes: int) -> None:
        self._line = EdgeBuffer(max_event_bytes)

    def feed(self, chunk: bytes) -> Iterator[Frame]:
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                self._line.extend(memoryview(chunk)[start:])
                return
            self._line.extend(memoryview(chunk)[start:newline])
            start = newline + 1
            frame = self._take_line()
            if frame is not None:
                yield frame

    def _take_line(self) -> Frame | None:
        raise NotImplementedError


class SseDecoder(_LineDecoder):
    """SSE events. A line that arrives whole within one chunk (and within `max_event_bytes`) is read
    straight from the chunk, and an event's single `data:` line is kept as it came (`_first`): the
    bounded buffers are used only for lines split across chunks and for multi-line data."""

    __slots__ = ("_data", "_event", "_first", "_has_data", "_limit", "_oversized")

    def __init__(self, max_event_bytes: int) -> None:
        super().__init__(max_event_bytes)
        self._limit = max_event_bytes
        self._data = EdgeBuffer(max_event_bytes)
        self._event: str | None = None
        # The event's data while it is one line read whole (not yet in `_data`).
        self._first: bytes | None = None
        self._has_data = False
        self._oversized = False

    def feed(self, chunk: bytes) -> Iterator[Frame]:
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        start = 0
        if len(self._line):
            # The rest of a line begun in an earlier chunk.
            newline = chunk.find(b"\n")
            if newline < 0:
                self._line.extend(chunk)
                return
            self._line.extend(memoryview(chunk)[:newline])
            start = newline + 1
            frame = self._take_line()
            if frame is not None:
                yield frame
        limit = self._limit
        find = chunk.find
        while True:
            newline = find(b"\n", start)
            if newline < 0:
                if start < len(chunk):
                    self._line.extend(memoryview(chunk)[start:])
                return
            if newline - start <= limit:
                frame = self._whole_line(chunk[start:newline])
            else:
                self._line.extend(memoryview(chunk)[start:newline])
                frame = self._take_line()
            start = newline + 1
            if frame is not None:
                yield frame

    def finish(self) -> Iterator[Frame]:
        if len(self._line):
            frame = self._take_line()
            if frame is not None:
                yield frame
        frame = self._dispatch()
        if frame is not None:
            yield frame

    def _whole_line(self, line: bytes) -> Frame | None:
        """One line, its LF gone, that was not cut to its edges."""
        if line[-1:] == b"\r":
            line = line[:-1]
        if not line:
            return self._dispatch()
        if line[0] == 0x3A:  # ":" a comment
            return None
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            if not self._has_data:
                self._first = value
                self._has_data = True
                return None
            self._spill()
            self._data.extend(b"\n")
            self._data.extend(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace").strip()[:128]
        return None

    def _spill(self) -> None:
        """Move a single data line kept aside into the bounded buffer (a second line is coming)."""
        if self._first is not None:
            self._data.extend(self._first)
            self._first = None

    def _take_line(self) -> Frame | None:
        line = self._line
        if not line.truncated:
            head = line.head()
            line.clear()
            return self._whole_line(head)
        head, tail = line.head(), line.tail()
        line.clear()
        if head.startswith(b":"):
            return None
        name, _, value = head.partition(b":")
        value = value.removeprefix(b" ")
        if name == b"event":
            self._event = value.decode("utf-8", "replace").strip()[:128]
        elif name == b"data":
            self._spill()
            if self._has_data:
                self._data.extend(b"\n")
            self._data.extend(value)
            # The middle of this line is gone: only its tail can still be searched for usage.
            self._oversized = True
            self._data.extend(tail.removesuffix(b"\r"))
            self._has_data = True
        return None

    def _dispatch(self) -> Frame | None:
        if not self._has_data:
            self._event = None
            return None
        first = self._first
        if first is not None:
            frame = Frame(self._event, first)
            self._first = None
        else:
            data = self._data
            if data.truncated or self._oversized:
                frame = Frame(self._event, b"", data.tail() if data.truncated else data.head())
            else:
                frame = Frame(self._event, data.head())
            data.clear()
            self._oversized = False
        self._event = None
        self._has_data = False
        return frame


class NdjsonDecoder(_LineDecoder):
    __slots__ = ()

    def finish(self) -> Iterator[Frame]:
        frame = self._take_line()
        if frame is not None:
            yield frame

    def _take_line(self) -> Frame | None:
        line = self._line
        frame = Frame(None, line.head().strip(), line.tail() if line.truncated else None)
        line.clear()
        return frame if frame.data else None


def frames_of_body(
    body: bytes | str, *, ndjson: bool = False, max_event_bytes: int = MAX_EVENT_BYTES
) -> list[Frame]:
    """Every frame of a whole recorded body (SSE events, or NDJSON lines with `ndjson=True`)."""
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if not ndjson:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    decoder: SseDecoder | NdjsonDecoder = (
        NdjsonDecoder(max_event_bytes) if ndjson else SseDecoder(max_event_bytes)
    )
    return [*decoder.feed(data), *decoder.finish()]
