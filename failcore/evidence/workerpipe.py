"""Length-prefixed frames on the DLP evidence worker's pipes (failcore.evidence.scanworker and its child,
failcore.evidence.scanchild): a 4-byte big-endian length, then an orjson payload, or the raw bytes of a
serialised event after a reply (write_reply). A length above MAX_FRAME_BYTES is refused as corrupt; reads
and writes on the proxy's side give up at a deadline (a stuck child)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import struct
import time
from typing import IO, Any

import orjson

LENGTH = struct.Struct(">I")
MAX_FRAME_BYTES = 1 << 30


# A worker's pipes are widened to this (Linux's default ceiling for an unprivileged process,
# /proc/sys/fs/pipe-max-size): a batch and its reply cross in one write and one read instead of one per
# 64 KiB, each of them a GIL hand-over with the proxy's event loop on the proxy's side.
PIPE_BYTES = 1 << 20


def widen_pipe(fd: int) -> None:
    """Ask for a PIPE_BYTES buffer on `fd`; where the system refuses (a lower ceiling, not Linux) the
    pipe keeps its size: slower, not wrong."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, setpipe, PIPE_BYTES)


def write_frame(stream: IO[bytes], payload: object) -> None:
    data = orjson.dumps(payload)
    stream.write(LENGTH.pack(len(data)) + data)
    stream.flush()


def ready(fd: int, events: int, deadline: float) -> bool:
    """Whether `fd` is ready (or closed) by `deadline` (poll: a restarted worker's pipe may be fd > 1024)."""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(max(0.0, deadline - time.monotonic()) * 1000))


def write_all(fd: int, data: bytes, deadline: float) -> None:
    """Write to a non-blocking pipe, giving up at `deadline` (a stopped child leaves its pipe full).

    Written first, polled only when the pipe is full: a batch's frame usually fits the (widened) pipe
    at once, and a poll before it cost a system call more, one more hand-over of the GIL with the
    proxy's event loop per batch."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            written = 0
        view = view[written:]
        if view and not ready(fd, select.POLLOUT, deadline):
            raise TimeoutError("the DLP evidence worker took no input")


def read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        if deadline is not None and not ready(fd, select.POLLIN, deadline):
            raise TimeoutError("no reply from the DLP evidence worker")
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise EOFError("the DLP evidence worker closed its pipe")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def write_reply(stream: IO[bytes], results: list[Any], serialised: list[bytes]) -> None:
    """The child's reply to a batch: its results, then each SERIALISED result's bytes as a frame."""
    data = orjson.dumps(results)
    stream.write(b"".join([LENGTH.pack(len(data)), data, *(LENGTH.pack(len(b)) + b for b in serialised)]))
    stream.flush()


def frame_size(head: bytes) -> int:
    """The payload size a frame's 4-byte head gives; refused past MAX_FRAME_BYTES as corrupt."""
    (size,) = LENGTH.unpack(head)
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"oversized frame from the DLP evidence worker ({size} bytes)")
    return size


def read_raw_frame(fd: int, deadline: float | None = None) -> bytes:
    return read_exact(fd, frame_size(read_exact(fd, LENGTH.size, deadline)), deadline)


def read_frame(fd: int, deadline: float | None = None) -> Any:
    return orjson.loads(read_raw_frame(fd, deadline))


# What one read of a worker's reply asks the pipe for (it returns what is there, up to this).
READ_SIZE = 1 << 20


class FrameReader:
    """The proxy's side of a worker's reply pipe, read through one buffer.

    A reply is many frames (one per serialised event); read frame by frame it cost two polls and two
    reads each, and every one of those system calls lets go of the GIL and takes it back, a hand-over
    with the proxy's event loop each time. Here a read takes whatever the pipe holds (up to READ_SIZE),
    so a reply costs a few reads. Used from one thread."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()
        self._start = 0

    def buffered(self) -> int:
        """Bytes read from the pipe and not yet taken."""
        return len(self._buffer) - self._start

    def read_exact(self, size: int, deadline: float | None) -> bytes:
        while self.buffered() < size:
            if deadline is not None and not ready(self.fd, select.POLLIN, deadline):
                raise TimeoutError("no reply from the DLP evidence worker")
            chunk = os.read(self.fd, max(READ_SIZE, size - self.buffered()))
            if not chunk:
                raise EOFError("the DLP evidence worker closed its pipe")
            if self._start:
                del self._buffer[: self._start]
                self._start = 0
            self._buffer += chunk
        data = bytes(self._buffer[self._start : self._start + size])
        self._start += size
        if self._start == len(self._buffer):
            self._buffer.clear()
            self._start = 0
        return data

    def read_raw_frame(self, deadline: float | None = None) -> bytes:
        return self.read_exact(frame_size(self.read_exact(LENGTH.size, deadline)), deadline)

    def read_frame(self, deadline: float | None = None) -> Any:
        return orjson.loads(self.read_raw_frame(deadline))
