"""Counting a run's aggregates over sealed segments in worker processes, one segment a task.

A cold report (no cache entry yet) of a big run is bound by parsing and counting every line of the
run; sealed segments are independent, so each is counted by a worker process on another core while
the report's own process verifies the tape and counts the open segment. A worker is a child
`python -m failcore.report.countworker` (the same failcore as the report's) that reads one task a line
on its stdin and answers each on its stdout; it ends when its stdin closes.

What crosses the process boundary is plain data: a task is the JSON `[segment path, run id]`, an
answer is a length-prefixed JSON `{"part": record or null}` (`RunPart.to_record`, the cache entry's
form, checked field by field again on arrival) or `null` when JSON cannot hold the part exactly (a
non-finite time or cost, an integer past 64 bits on a hostile tape). A segment whose answer is null,
missing or unusable (a worker that failed or died) is counted in the report's process instead."""

from __future__ import annotations

import os
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Final

import orjson

from failcore.report.aggregates import RunPart, count_part, part_from_record, storable
from failcore.spawn import start_worker

# Uncounted sealed bytes below which workers are not worth their start (~0.2 s of CPU each).
PARALLEL_MIN_BYTES: Final = 48 * 2**20
_LENGTH: Final = struct.Struct(">Q")
_MAX_ANSWER: Final = 512 * 2**20


def count_sealed(path: str, run: str) -> bytes:
    """The run's part of one sealed segment as JSON (`{"part": record or null}`), or `null` when JSON
    cannot hold it exactly."""
    part, _ = count_part(Path(path), run, 0, sealed=True)
    if part.events and not storable(part):
        return b"null"
    try:
        return orjson.dumps({"part": part.to_record() if part.events else None})
    except TypeError:
        return b"null"


def part_from_answer(data: bytes | None, run: str, size: int) -> tuple[RunPart | None] | None:
    """(the part, or None when the run is not in the segment) from a worker's answer; None when the
    answer is unusable (the segment is then counted here)."""
    if data is None:
        return None
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or record.keys() != {"part"}:
        return None
    if record["part"] is None:
        return (None,)
    part = part_from_record(record["part"], run, size)
    return (part,) if part is not None else None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Workers:
    """Worker children counting sealed segments; `start(tasks)` hands them out (one task at a time
    to each worker, from a shared queue), `answers()` waits for every answer."""

    def __init__(self, count: int, run: str) -> None:
        self._run = run
        self._tasks: queue.SimpleQueue[tuple[int, str] | None] = queue.SimpleQueue()
        self._answers: dict[int, bytes | None] = {}
        self._lock = threading.Lock()
        self._children: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(count):
                self._children.append(_spawn())
        except OSError:
            self.close()
            raise
        self._threads = [
            threading.Thread(target=self._drive, args=(child,), name="failcore-count", daemon=True)
            for child in self._children
        ]

    def start(self, tasks: list[tuple[int, str]]) -> None:
        for task in tasks:
            self._tasks.put(task)
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.start()

    def answers(self) -> dict[int, bytes | None]:
        for thread in self._threads:
            thread.join()
        return self._answers

    def _drive(self, child: subprocess.Popen[bytes]) -> None:
        """Feed one child task after task until the queue is empty (or the child fails)."""
        assert child.stdin is not None and child.stdout is not None
        while (task := self._tasks.get()) is not None:
            index, path = task
            try:
                child.stdin.write(orjson.dumps([path, self._run]) + b"\n")
                child.stdin.flush()
                answer = _read_answer(child.stdout)
            except (OSError, ValueError):
                answer = None
            with self._lock:
                self._answers[index] = answer
            if answer is None:
                break  # this child failed: its remaining tasks go to the others or to the report

    def close(self) -> None:
        for child in self._children:
            if child.stdin is not None:
                with suppress(OSError):
                    child.stdin.close()
        for child in self._children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()


def _read_answer(stream: IO[bytes]) -> bytes | None:
    head = stream.read(_LENGTH.size)
    if len(head) != _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    if length > _MAX_ANSWER:
        return None
    data = stream.read(length)
    return data if len(data) == length else None


def _spawn() -> subprocess.Popen[bytes]:
    # In the report's process group: a Ctrl-C of the report reaches its workers too.
    return start_worker("failcore.report.countworker")


@contextmanager
def counting_workers(tasks: int, task_bytes: int, run: str) -> Iterator[Workers | None]:
    """Worker children for `tasks` sealed segments of `task_bytes` in all, or None when counting them
    here is as fast (one core, one task, little to count) or children cannot start."""
    count = min(tasks, usable_cores())
    if count < 2 or task_bytes < PARALLEL_MIN_BYTES:
        yield None
        return
    try:
        workers = Workers(count, run)
    except OSError:
        yield None
        return
    try:
        yield workers
    finally:
        workers.close()


def main() -> None:
    """The worker child: one task a line on stdin, one answer per task on stdout, until EOF."""
    import gc

    gc.disable()  # as paused_gc in the report: no cycles among the parsed events
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        try:
            path, run = orjson.loads(line)
            answer = count_sealed(str(path), str(run))
        except Exception:  # a bad task or an unreadable segment: the report counts it itself
            answer = b"null"
        out.write(_LENGTH.pack(len(answer)) + answer)
        out.flush()
        gc.collect()


if __name__ == "__main__":
    main()
