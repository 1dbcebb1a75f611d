"""Length-prefixed frames on the DLP evidence worker's pipes (failcore.evidence.scanworker and its child,
failcore.evidence.scanchild): a 4-byte big-endian length, then an orjson payload, or the raw bytes of a
serialised event after a reply (write_reply). A length above MAX_FRAME_BYTES is refused as corrupt; reads
and writes on the proxy's side give up at a deadline (a stuck child)."""

from __future__ import annotations

import os
import select
import struct
import time
from typing import IO, Any

import orjson

LENGTH = struct.Struct(">I")
MAX_FRAME_BYTES = 1 << 30


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
    """Write to a non-blocking pipe, giving up at `deadline` (a stopped child leaves its pipe full)."""
    view = memoryview(data)
    while view:
        if not ready(fd, select.POLLOUT, deadline):
            raise TimeoutError("the DLP evidence worker took no input")
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            continue
        view = view[written:]


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


def read_raw_frame(fd: int, deadline: float | None = None) -> bytes:
    (size,) = LENGTH.unpack(read_exact(fd, LENGTH.size, deadline))
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"oversized frame from the DLP evidence worker ({size} bytes)")
    return read_exact(fd, size, deadline)


def read_frame(fd: int, deadline: float | None = None) -> Any:
    return orjson.loads(read_raw_frame(fd, deadline))
