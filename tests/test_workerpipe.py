"""failcore.evidence.workerpipe: the proxy's side of a worker's reply pipe reads through one buffer.

The replies here are written by the child's own writer (`write_reply`, as failcore.evidence.scanchild
sends them) into a real pipe, in whatever pieces the test chooses; the frames read back must be those
bytes, whatever the pieces, and a reply of many frames must cost a few reads of the pipe (every read
lets go of the GIL: a hand-over with the proxy's event loop), not two a frame.
"""

from __future__ import annotations

import fcntl
import io
import os
import random
import threading
import time

import orjson
import pytest

from failcore.evidence import workerpipe
from failcore.evidence.workerpipe import LENGTH, PIPE_BYTES, FrameReader, widen_pipe, write_reply


def _reply(results: list[object], serialised: list[bytes]) -> bytes:
    out = io.BytesIO()
    write_reply(out, results, serialised)
    return out.getvalue()


def _feed(data: bytes, pieces: list[int], delay: float = 0.0) -> tuple[int, threading.Thread]:
    """A pipe whose writer end sends `data` cut at `pieces` (then the rest), then closes."""
    r, w = os.pipe()

    def send() -> None:
        view, at = memoryview(data), 0
        for size in [*pieces, len(data)]:
            chunk = view[at : at + size]
            at += len(chunk)
            while chunk:
                written = os.write(w, chunk)
                chunk = chunk[written:]
            if delay:
                time.sleep(delay)
        os.close(w)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return r, thread


def test_frames_come_back_whole_however_the_pipe_cuts_them() -> None:
    rng = random.Random(7)
    for _ in range(40):
        lines = [rng.randbytes(rng.randrange(0, 3000)) for _ in range(rng.randrange(1, 30))]
        results = [rng.randrange(3) for _ in lines]
        data = _reply(results, lines)
        pieces = [rng.randrange(1, 700) for _ in range(rng.randrange(0, 12))]
        fd, thread = _feed(data, pieces)
        reader = FrameReader(fd)
        try:
            assert reader.read_frame(time.monotonic() + 10) == results
            assert [reader.read_raw_frame(time.monotonic() + 10) for _ in lines] == lines
            assert reader.buffered() == 0
            with pytest.raises(EOFError):
                reader.read_raw_frame(time.monotonic() + 10)
        finally:
            thread.join()
            os.close(fd)


def test_a_reply_of_many_frames_costs_a_few_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [orjson.dumps({"kind": "network", "i": i, "pad": "x" * 2000}) for i in range(200)]
    data = _reply([2] * len(lines), lines)
    assert len(data) < PIPE_BYTES  # all of it fits a widened pipe: the writer below never waits
    r, w = os.pipe()
    widen_pipe(w)
    if fcntl.fcntl(w, getattr(fcntl, "F_GETPIPE_SZ", 1032)) < len(data):
        pytest.skip("this system does not let a pipe be widened past the reply's size")
    os.write(w, data)
    os.close(w)
    reads: list[int] = []
    real_read = os.read

    def counted(fd: int, size: int) -> bytes:
        reads.append(size)
        return real_read(fd, size)

    monkeypatch.setattr(workerpipe.os, "read", counted)
    reader = FrameReader(r)
    try:
        assert len(reader.read_frame(time.monotonic() + 10)) == len(lines)
        assert [reader.read_raw_frame(time.monotonic() + 10) for _ in lines] == lines
    finally:
        os.close(r)
    # Frame by frame this was 402 reads (a length, then a payload, per frame).
    assert len(reads) <= 2


def test_a_frame_cut_short_by_the_worker_dying_is_an_end_of_file() -> None:
    data = _reply([2], [b"x" * 5000])[:-100]
    fd, thread = _feed(data, [3, 50])
    reader = FrameReader(fd)
    try:
        reader.read_frame(time.monotonic() + 10)
        with pytest.raises(EOFError):
            reader.read_raw_frame(time.monotonic() + 10)
    finally:
        thread.join()
        os.close(fd)


def test_a_worker_that_stops_mid_frame_times_out() -> None:
    r, w = os.pipe()
    try:
        os.write(w, LENGTH.pack(100) + b"only part")
        reader = FrameReader(r)
        with pytest.raises(TimeoutError):
            reader.read_raw_frame(time.monotonic() + 0.2)
    finally:
        os.close(w)
        os.close(r)


def test_an_oversized_length_is_refused_as_corrupt() -> None:
    r, w = os.pipe()
    try:
        os.write(w, LENGTH.pack(workerpipe.MAX_FRAME_BYTES + 1))
        with pytest.raises(ValueError, match="oversized"):
            FrameReader(r).read_raw_frame(time.monotonic() + 5)
    finally:
        os.close(w)
        os.close(r)


def test_a_frame_that_fits_the_pipe_is_written_without_a_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    polls: list[int] = []
    real_ready = workerpipe.ready

    def counted(fd: int, events: int, deadline: float) -> bool:
        polls.append(events)
        return real_ready(fd, events, deadline)

    monkeypatch.setattr(workerpipe, "ready", counted)
    r, w = os.pipe()
    try:
        os.set_blocking(w, False)
        frame = LENGTH.pack(3000) + b"y" * 3000
        workerpipe.write_all(w, frame, time.monotonic() + 5)
        assert os.read(r, 1 << 16) == frame
    finally:
        os.close(w)
        os.close(r)
    # (Each poll lets go of the GIL: a hand-over with the proxy's event loop, once per batch.)
    assert polls == []


def test_a_frame_larger_than_the_pipe_arrives_whole_as_the_worker_reads() -> None:
    r, w = os.pipe()
    os.set_blocking(w, False)
    capacity = fcntl.fcntl(w, getattr(fcntl, "F_GETPIPE_SZ", 1032))
    frame = os.urandom(capacity * 3 + 123)
    got = bytearray()

    def drain() -> None:
        while len(got) < len(frame):
            time.sleep(0.01)  # a worker slower than the writer: the pipe fills up in between
            got.extend(os.read(r, 1 << 16))

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        workerpipe.write_all(w, frame, time.monotonic() + 30)
        reader.join(30)
    finally:
        os.close(w)
        os.close(r)
    assert bytes(got) == frame


def test_a_worker_that_takes_no_input_times_out() -> None:
    r, w = os.pipe()
    os.set_blocking(w, False)
    capacity = fcntl.fcntl(w, getattr(fcntl, "F_GETPIPE_SZ", 1032))
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            workerpipe.write_all(w, b"z" * (capacity + 1), started + 0.2)
        assert os.read(r, capacity + 1) == b"z" * capacity  # what fitted went; the rest waited in vain
    finally:
        os.close(w)
        os.close(r)
