"""The tape writer: one background thread turns submitted events into hash-chained, signed JSONL.

The proxy's event loop only ever calls `submit()`, a non-blocking append to a bounded queue, and `fault()`,
which says without waiting whether evidence can be written right now (so a fail-closed proxy can refuse
a request before it leaves); serialisation, hashing, signing and disk I/O all happen on the writer
thread. Losing events is never silent: queue overflows and failed writes are counted and recorded on
the tape itself as `dropped` markers, and a builder that raises becomes an `internal_error` line.

Every writer ends with a signed checkpoint that names itself final, and the manifest it leaves is
signed and names the head of the chain: a tape whose end was cut off no longer verifies as complete.

Size: ~800 lines because `TapeWriter` is one thread's state: the queue, the chain head, the open
segment, rotation, checkpoints and the manifest change together under one lock-free owner (the writer
thread); pieces split out would all reach into that state. Line encoding and the directory lock are
the parts that stand alone, and they are separate functions and classes above it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from failcore.paths import ensure_private_dir
from failcore.tape import keys
from failcore.tape.reader import (
    GENESIS_PREV,
    MANIFEST_FILE,
    TAPE_PUBLIC_KEY_FILE,
    TapeFormatError,
    is_well_formed,
    last_complete_line,
    line_hash,
    line_prev,
    line_seq,
    list_segments,
    read_manifest,
    segment_name,
    segment_number,
)
from failcore.tape.serialised import SerialisedEvent

LOCK_FILE: Final = ".lock"
RESERVED_KEYS: Final = frozenset({"prev", "seq", "h"})
WRITER_KINDS: Final = frozenset({"checkpoint"})  # kinds only the writer may produce (signature-bearing)

_log = logging.getLogger("failcore.tape")
_MAX_BATCH_ITEMS: Final = 4096
_IDLE_POLL: Final = 0.25
# Under load the writer takes one batch per this many seconds (a flush, close() or a half-full queue
# cut the wait short). Each batch has a fixed cost that does not shrink with its size: a wake-up of the
# writer's thread, its GIL hand-overs with the proxy's event loop, a round trip to the DLP evidence
# worker (a process woken with cold caches). Measured on a 2-core AMD EPYC with 1 KB exchanges at
# ~150 requests/s: batches of a second instead of 20 ms cut the writer thread's CPU per exchange from
# 173 to 41 µs and the worker's from 401 to 257 µs (BENCHMARKS.md, branch loopcost). Events wait in
# memory a little longer before they reach the OS; a crash loses what is queued, as before (the queue
# itself may hold far more under backpressure).
COALESCE_SECONDS: Final = 0.1
# The window when evidence must hold (`fail_open: false`): what a crash can lose stays as before.
STRICT_COALESCE_SECONDS: Final = 0.02
# The first batch after the writer was idle waits only this long (a burst gathers; a lone event, such
# as a run's start, reaches the OS as soon as before).
_FIRST_BATCH_SECONDS: Final = 0.02
_ERROR_MESSAGE_LIMIT: Final = 500


class TapeLockedError(RuntimeError):
    """Another writer holds the tape directory."""


def encode_line(prev: bytes, seq: int, body: bytes) -> tuple[bytes, bytes]:
    """(line with newline, its hash hex) for an event body as produced by orjson.dumps(dict)."""
    # The hashed core is `head + inner + "}"`; hashed in pieces and joined once, the body is copied
    # once (as concatenations, five times).
    head = b'{"prev":"' + prev + b'","seq":' + str(seq).encode("ascii") + b","
    inner = memoryview(body)[1:-1]
    digest = hashlib.sha256(head)
    _update_holding_gil(digest, inner)
    digest.update(b"}")
    hexdigest = digest.hexdigest().encode("ascii")
    return b"".join((head, inner, b',"h":"', hexdigest, b'"}\n')), hexdigest


# hashlib releases the GIL for every update() of 2048 bytes or more. For tape lines (a few KB) that
# release costs far more than it saves: each one hands the GIL to the proxy's event loop and then
# forces it to give the GIL back, stalling the loop (measured: ~7% of proxy throughput). Hashing in
# smaller pieces keeps the GIL for the few microseconds the hash takes.
_HASH_PIECE: Final = 2047


def _update_holding_gil(digest: hashlib._Hash, data: bytes | memoryview) -> None:
    if len(data) <= _HASH_PIECE:
        digest.update(data)
        return
    view = memoryview(data)
    for start in range(0, len(data), _HASH_PIECE):
        digest.update(view[start : start + _HASH_PIECE])


def serialise_event(event: object) -> bytes:
    """orjson body of a user event, refusing what would break the line format or forge writer lines."""
    if not isinstance(event, dict):
        raise TypeError(f"tape event must be a dict, got {type(event).__name__}")
    if not event:
        raise ValueError("tape event must not be empty")
    reserved = RESERVED_KEYS.intersection(event)
    if reserved:
        raise ValueError(f"tape event uses reserved keys {sorted(reserved)}")
    if event.get("kind") in WRITER_KINDS:
        raise ValueError(f"tape event kind {event['kind']!r} is reserved for the writer")
    return orjson.dumps(event)


@dataclass(slots=True)
class SegmentRecord:
    name: str
    first_seq: int | None = None
    last_seq: int | None = None
    first_prev: str | None = None
    last_h: str | None = None
    opened: float | None = None
    closed: float | None = None


@dataclass(slots=True)
class _Cursor:
    """Chain position plus per-segment counters; the writer keeps a committed and a tentative copy."""

    seq: int
    prev: bytes
    since_checkpoint: int = 0
    segment_bytes: int = 0
    segment_lines: int = 0


@dataclass(slots=True)
class _OpenSegment:
    number: int
    path: Path
    fd: int
    opened_monotonic: float
    record: SegmentRecord


class _FlushToken:
    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


_STOP: Final = object()


class _DirectoryLock:
    """flock on `<tape>/.lock` for the writer's lifetime; the file names the holder's pid."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise TapeLockedError(
                    f"tape {self._path.parent} is already being written by another writer (pid {holder})"
                ) from exc
            raise
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _make_private(fd: int) -> None:
    """`fd`'s file 0600. A file system refusing chmod (EPERM on some network or FUSE mounts) is no
    failure for a file that is already private: O_CREAT with mode 0o600 never makes one wider."""
    try:
        os.fchmod(fd, 0o600)
    except OSError as exc:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            raise
        _log.warning("tape segment left at its creation mode (private already): fchmod failed: %s", exc)


class TapeWriter:
    def __init__(
        self,
        directory: Path,
        *,
        signing_key: Ed25519PrivateKey,
        run_id: str,
        queue_size: int = 10000,
        segment_bytes: int = 64 * 2**20,
        segment_seconds: float | None = None,
        checkpoint_every: int = 1000,
        reserve_bytes: int = 0,
        on_error: Callable[[str], None] | None = None,
        prepare: Callable[[list[object]], list[object]] | None = None,
        coalesce_seconds: float = COALESCE_SECONDS,
    ) -> None:
        """`prepare`, called in the writer thread with each drained batch before it is written, may
        return it with items replaced (the DLP scan worker turns deferred scans into events there)."""
        if queue_size < 1 or segment_bytes < 1 or checkpoint_every < 1:
            raise ValueError("queue_size, segment_bytes and checkpoint_every must be positive")
        if reserve_bytes < 0:
            raise ValueError("reserve_bytes must be >= 0")
        if segment_seconds is not None and segment_seconds <= 0:
            raise ValueError("segment_seconds must be positive")
        self._coalesce = 0.0
        self.coalesce_seconds = coalesce_seconds
        self._directory = Path(directory)
        self._signing_key = signing_key
        self._key_id = keys.public_key_id(signing_key.public_key())
        self._run_id = run_id
        # The submit queue: a deque the event loop appends to without a lock (deque.append is atomic),
        # bounded by submit(). The writer thread is only woken through `_wake` when it sleeps idle or
        # the queue is half full; under load it drains the deque every `coalesce_seconds` on its own,
        # so a submit costs the event loop no lock, no condition and no wake-up of another thread.
        self._pending: deque[object] = deque()
        self._capacity = queue_size
        self._wake = threading.Event()
        self._idle = False
        # A flush or close() is waiting: the next batch is taken without waiting for more events.
        self._urgent = False
        # The last batch had events: the writer gathers the next one without being woken.
        self._busy = False
        self._segment_bytes_limit = segment_bytes
        self._segment_seconds = segment_seconds
        self._checkpoint_every = checkpoint_every
        self._on_error = on_error
        self._reserve_bytes = reserve_bytes
        self._prepare = prepare

        # Only submit() touches _submit_drops and only the writer thread touches the rest, so the
        # counters need no lock (submit() is documented as called from one event loop).
        self._submit_drops = 0
        self._write_drops = 0
        self._drops_marked = 0
        self._written = 0
        self._failing = False
        # Why the writer cannot write right now (set and cleared by the writer thread, read by fault()
        # from any thread: a str assignment is atomic).
        self._write_fault: str | None = None
        self._sync_fault: str | None = None

        self._lock = _DirectoryLock(self._directory)
        self._thread: threading.Thread | None = None
        self._stop_requested = threading.Event()
        self._close_guard = threading.Lock()
        self._closing = False
        self._closed = False

        self._segments: list[SegmentRecord] = []
        self._segment: _OpenSegment | None = None
        self._segment_damaged = False
        self._committed = _Cursor(0, GENESIS_PREV)
        self._tentative = _Cursor(0, GENESIS_PREV)
        self._buffer: list[bytes] = []
        self._buffer_events = 0
        self._buffer_marks: int | None = None
        self._buffer_has_checkpoint = False
        self._batch_started = 0.0

    # --- public API ------------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def dropped(self) -> int:
        """Events lost so far: rejected by a full queue, submitted after close, or lost to write errors."""
        return self._submit_drops + self._write_drops

    @property
    def written(self) -> int:
        """Submitted events written to the tape (an `internal_error` line standing in for one counts)."""
        return self._written

    @property
    def queue_size(self) -> int:
        """Capacity of the submit queue."""
        return self._capacity

    @property
    def queue_depth(self) -> int:
        """Events waiting for the writer thread right now."""
        return len(self._pending)

    @property
    def last_seq(self) -> int:
        return self._committed.seq

    @property
    def key_id(self) -> str:
        return self._key_id

    # A free-space reading that left at least ROOMY_BYTES above the reserve is trusted (no statvfs
    # meanwhile) for as long as filling the room above the reserve would take at FILL_BYTES_PER_SECOND
    # (1 GiB in 10 ms: 100 GB/s, beyond any disk or tmpfs), at most ROOMY_MAX_SECONDS. Any closer to
    # the reserve, every call reads it afresh. (A fixed 10 ms made a fail-closed proxy under load read
    # the file system ~80 times a second on its event loop, each read a hand-over of the GIL.)
    ROOMY_BYTES: Final = 1 << 30
    FILL_BYTES_PER_SECOND: Final = 100 << 30
    ROOMY_MAX_SECONDS: Final = 1.0
    _roomy_until: float = 0.0  # (monotonic) until when the last reading is trusted

    def fault(self) -> str | None:
        """Why an event submitted now might not reach the disk, or None when it will.

        Never blocks (at most one statvfs when a reserve is set) and is safe from any thread: a
        fail-closed proxy calls it before it lets a request leave. Faults: the writer is not running or
        closing, its queue is full, its last write or fsync failed (ENOSPC, EIO, …; cleared by the next
        one that succeeds), or the tape's file system has less free space than the reserve, which is
        kept so the evidence of requests already forwarded still fits (see ROOMY_BYTES)."""
        thread = self._thread
        if self._closing:
            return "the tape writer is closed"
        if thread is None or not thread.is_alive():
            return "the tape writer is not running"
        if self._segment_damaged:
            return "the current tape segment is unusable"
        fault = self._write_fault or self._sync_fault
        if fault is not None:
            return fault
        if len(self._pending) >= self._capacity:
            return f"the tape writer's queue is full ({self._capacity} events waiting)"
        if self._reserve_bytes and (now := time.monotonic()) >= self._roomy_until:
            try:
                st = os.statvfs(self._directory)
            except OSError as exc:
                return f"cannot check the tape's free space: {exc}"
            free = st.f_bavail * st.f_frsize
            if free < self._reserve_bytes:
                return (
                    f"the tape's file system has {free} bytes free, less than the "
                    f"{self._reserve_bytes}-byte reserve for evidence"
                )
            if (room := free - self._reserve_bytes) >= self.ROOMY_BYTES:
                self._roomy_until = now + min(self.ROOMY_MAX_SECONDS, room / self.FILL_BYTES_PER_SECOND)
        return None

    @property
    def coalesce_seconds(self) -> float:
        """How long a batch gathers under load (read by the writer thread at each batch)."""
        return self._coalesce

    @coalesce_seconds.setter
    def coalesce_seconds(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("coalesce_seconds must be >= 0")
        self._coalesce = seconds

    def start(self) -> None:
        """Open (creating 0700) and lock the tape directory, start a new segment and the writer thread."""
        if self._thread is not None or self._closed:
            raise RuntimeError("a TapeWriter can only be started once")
        self._prepare_directory()
        self._lock.acquire()
        try:
            self._resume_chain()
            self._install_public_key()
            self._open_segment(self._next_segment_number())
            self._save_manifest()
        except BaseException:
            self._close_segment_fd()
            self._lock.release()
            raise
        self._thread = threading.Thread(target=self._run, name=f"tape-writer:{self._directory}", daemon=True)
        self._thread.start()

    def submit(self, item: dict[str, Any] | Callable[[], dict[str, Any]]) -> bool:
        """Queue an event, or a builder called on the writer thread. Never blocks, never raises."""
        try:
            if self._closing or len(self._pending) >= self._capacity:
                self._submit_drops += 1
                return False
            self._pending.append(item)
            if self._idle or len(self._pending) * 2 >= self._capacity:
                self._wake.set()
            return True
        except Exception:  # submit() runs on the proxy's event loop: it must not take it down
            self._submit_drops += 1
            return False

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far has been handed to the OS; False on timeout or failure."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return False
        token = _FlushToken()
        # Not an event: queued even when the queue is full (it holds at most one token per caller).
        self._pending.append(token)
        self._urgent = True
        self._wake.set()
        return token.done.wait(timeout) and token.ok

    def close(self, timeout: float = 10.0) -> None:
        """Drain the queue, write a final checkpoint, fsync, update the manifest and unlock. Idempotent."""
        with self._close_guard:
            if self._closed:
                return
            self._closing = True
            self._closed = True
            thread = self._thread
            if thread is None:
                return
            deadline = time.monotonic() + timeout
            self._stop_requested.set()
            # Wakes an idle thread at once.
            self._pending.append(_STOP)
            self._urgent = True
            self._wake.set()
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self._report(f"tape writer did not finish within {timeout}s; it keeps draining in background")

    def __enter__(self) -> TapeWriter:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- overridable I/O -------------------------------------------------------------------------

    def _write_bytes(self, data: bytes) -> None:
        """Append one batch of complete lines to the current segment. Tests override this to simulate
        slow or failing disks; it must raise OSError on failure."""
        assert self._segment is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._segment.fd, view) :]

    # --- writer thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            items = self._next_items()
            tokens: list[_FlushToken] = []
            try:
                stopping = self._process(items, tokens)
            except Exception as exc:  # a bug here must not silently stop the tape
                self._write_drops += self._buffer_events
                self._discard_buffer()
                self._report(f"tape writer error: {type(exc).__name__}: {exc}")
            finally:
                for token in tokens:
                    token.ok = not self._failing
                    token.done.set()
            if self._stop_requested.is_set() and not self._pending:
                stopping = True
        try:
            self._finish()
        except Exception as exc:
            self._report(f"tape writer failed while closing: {type(exc).__name__}: {exc}")
        finally:
            self._close_segment_fd()
            self._lock.release()

    def _next_items(self) -> list[object]:
        pending = self._pending
        if self._busy:
            # The previous batch found work: gather the next one for the rest of the window, without
            # being woken for each event (submit() wakes only an idle writer).
            wait = self._batch_started + self._coalesce - time.monotonic()
        else:
            if not pending:
                # Idle: wait to be woken by the next submit (or poll). `_idle` is raised before the
                # deque is looked at again, so a submit either lands before that look or sees `_idle`
                # and wakes us.
                self._idle = True
                if not pending:
                    self._wake.wait(_IDLE_POLL)
                self._idle = False
                self._wake.clear()
                if not pending:
                    return []
            # A lone event after an idle spell (a run's start) reaches the OS as soon as before.
            wait = min(self._coalesce, _FIRST_BATCH_SECONDS)
        # Let a burst gather, unless the queue fills up or a flush or close() asks for the batch now
        # (they set `_wake`). Under load this turns one wake-up and GIL hand-over per event (and one
        # round trip to the DLP evidence worker per batch) into one per batch; the proxy's event loop
        # pays for every hand-over, the tape only waits a little.
        if wait > 0 and not self._urgent and len(pending) * 2 < self._capacity:
            self._wake.wait(wait)
            self._wake.clear()
        self._urgent = False
        self._batch_started = time.monotonic()
        items = self._take(_MAX_BATCH_ITEMS)
        self._busy = bool(items)
        return items

    def _take(self, limit: int) -> list[object]:
        pending = self._pending
        items: list[object] = []
        with contextlib.suppress(IndexError):
            while len(items) < limit:
                items.append(pending.popleft())
        return items

    def _process(self, items: list[object], tokens: list[_FlushToken]) -> bool:
        """Write one drained batch; True when the stop sentinel was among the items."""
        stopping = False
        if self._segment_damaged:
            self._rotate()
        self._append_drop_marker()
        if self._prepare is not None and items:
            try:
                items = self._prepare(items)
            except Exception as exc:  # the batch is written as it came: its builders still work
                self._report(f"tape batch hook failed: {type(exc).__name__}: {exc}")
        for item in items:
            if item is _STOP:
                stopping = True
            elif isinstance(item, _FlushToken):
                tokens.append(item)
            else:
                self._append(self._materialise(item), counts_as_event=True)
                if self._tentative.since_checkpoint >= self._checkpoint_every:
                    self._append_checkpoint()
                if self._tentative.segment_bytes >= self._segment_bytes_limit and self._commit():
                    self._rotate()
        self._commit()
        if self._rotation_due():
            self._rotate()
        return stopping

    def _finish(self) -> None:
        # Items can land after the stop sentinel when submit() raced close(); they are still written.
        leftovers = [item for item in self._drain_nowait() if item is not _STOP]
        tokens: list[_FlushToken] = []
        self._process(leftovers, tokens)
        self._append_drop_marker()
        # Always the last line this writer writes, even right after another checkpoint: it signs that
        # the tape ends here, so a tape cut at an earlier checkpoint is not mistaken for a whole one.
        self._append_checkpoint(final=True)
        final = self._commit()
        self._fsync_segment()
        if self._segment is not None:
            self._segment.record.closed = time.time()
        self._save_manifest(final=final)
        for token in tokens:
            token.ok = not self._failing
            token.done.set()

    def _drain_nowait(self) -> list[object]:
        return self._take(len(self._pending) + 1)

    # --- building lines --------------------------------------------------------------------------

    def _materialise(self, item: object) -> bytes:
        if type(item) is SerialisedEvent:  # (checked when it was made: failcore.tape.serialised)
            return item.body
        try:
            event = item() if callable(item) else item
        except Exception as exc:
            return self._internal_error_body(exc, "tape builder")
        try:
            return serialise_event(event)
        except Exception as exc:
            return self._internal_error_body(exc, "tape serialise")

    def _internal_error_body(self, exc: Exception, where: str) -> bytes:
        try:
            message = str(exc)
        except Exception:
            message = "<unprintable exception>"
        # Same shape as the proxy's own internal_error events (failcore.event.EgressEvent).
        return orjson.dumps(
            {
                "kind": "internal_error",
                "v": 1,
                "run": self._run_id,
                "ts_start": time.time(),
                "ts_end": None,
                "fail_reason": "internal_error",
                "error": f"{type(exc).__name__}: {message[:_ERROR_MESSAGE_LIMIT]}",
                "detail": {"where": where, "type": type(exc).__name__},
            }
        )

    def _append(self, body: bytes, *, counts_as_event: bool, checkpoint: bool = False) -> None:
        cursor = self._tentative
        seq = cursor.seq + 1
        line, digest = encode_line(cursor.prev, seq, body)
        self._buffer.append(line)
        cursor.seq = seq
        cursor.prev = digest
        cursor.segment_bytes += len(line)
        cursor.segment_lines += 1
        cursor.since_checkpoint = 0 if checkpoint else cursor.since_checkpoint + 1
        if counts_as_event:
            self._buffer_events += 1
        if checkpoint:
            self._buffer_has_checkpoint = True

    def _append_checkpoint(self, *, final: bool = False) -> None:
        cursor = self._tentative
        seq = cursor.seq + 1
        body = orjson.dumps(
            {
                "kind": "checkpoint",
                "v": 1,
                "ts": time.time(),
                "run": self._run_id,
                "key_id": self._key_id,
                "count": cursor.since_checkpoint,
                "final": final,
                "sig": keys.sign_checkpoint(self._signing_key, cursor.prev, seq, final),
            }
        )
        self._append(body, counts_as_event=False, checkpoint=True)

    def _append_drop_marker(self) -> None:
        total = self.dropped
        already = self._drops_marked if self._buffer_marks is None else self._buffer_marks
        if total <= already:
            return
        body = orjson.dumps(
            {
                "kind": "dropped",
                "v": 1,
                "ts": time.time(),
                "run": self._run_id,
                "count": total - already,
                "total": total,
            }
        )
        self._append(body, counts_as_event=False)
        self._buffer_marks = total

    # --- committing ------------------------------------------------------------------------------

    def _commit(self) -> bool:
        """Write the buffered lines; on failure roll the chain back so the tape stays consistent."""
        if not self._buffer:
            return True
        if self._segment_damaged or self._segment is None:
            return self._fail_buffer(OSError(errno.EIO, "current segment is unusable"))
        data = b"".join(self._buffer)
        try:
            self._write_bytes(data)
        except OSError as exc:
            self._undo_partial_write()
            return self._fail_buffer(exc)
        self._committed = replace(self._tentative)
        self._segment.record.last_seq = self._committed.seq
        self._segment.record.last_h = self._committed.prev.decode("ascii")
        self._written += self._buffer_events
        if self._buffer_marks is not None:
            self._drops_marked = self._buffer_marks
        has_checkpoint = self._buffer_has_checkpoint
        self._discard_buffer()
        self._write_fault = None
        if self._failing:
            self._failing = False
            self._report("tape writes succeed again")
        if has_checkpoint or self._sync_fault is not None:
            self._fsync_segment()
        return True

    def _fail_buffer(self, exc: OSError) -> bool:
        self._write_drops += self._buffer_events
        lost = self._buffer_events
        self._discard_buffer()
        self._write_fault = f"tape write failed: {exc}"
        if not self._failing:
            self._failing = True
            self._report(f"tape write failed ({exc}); {lost} event(s) dropped, retrying on the next event")
        return False

    def _discard_buffer(self) -> None:
        self._buffer.clear()
        self._buffer_events = 0
        self._buffer_marks = None
        self._buffer_has_checkpoint = False
        self._tentative = replace(self._committed)

    def _undo_partial_write(self) -> None:
        # A short write followed by an error leaves half a line; cut back to the last committed line
        # so later lines do not land mid-line. If even that fails, the segment is abandoned.
        if self._segment is None:
            return
        try:
            if os.fstat(self._segment.fd).st_size != self._committed.segment_bytes:
                os.ftruncate(self._segment.fd, self._committed.segment_bytes)
        except OSError:
            self._segment_damaged = True

    def _fsync_segment(self) -> None:
        if self._segment is None or self._segment_damaged:
            return
        try:
            os.fsync(self._segment.fd)
        except OSError as exc:
            if self._sync_fault is None:
                self._report(f"tape fsync failed: {exc}")
            self._sync_fault = f"tape fsync failed: {exc}"
        else:
            self._sync_fault = None

    # --- segments --------------------------------------------------------------------------------

    def _rotation_due(self) -> bool:
        if self._committed.segment_lines == 0 or self._segment is None:
            return False
        if self._committed.segment_bytes >= self._segment_bytes_limit:
            return True
        return (
            self._segment_seconds is not None
            and time.monotonic() - self._segment.opened_monotonic >= self._segment_seconds
        )

    def _rotate(self) -> None:
        """Seal the current segment with a checkpoint and continue the chain in the next one."""
        if self._segment is None:
            return
        if not self._segment_damaged:
            if self._buffer and not self._commit():
                return
            self._append_checkpoint()
            if not self._commit():
                return
        old = self._segment
        try:
            self._open_segment(old.number + 1)
        except OSError as exc:
            self._segment = old
            self._report(f"cannot open a new tape segment: {exc}")
            return
        with contextlib.suppress(OSError):
            os.close(old.fd)
        old.record.closed = time.time()
        self._segment_damaged = False
        self._save_manifest()

    def _open_segment(self, number: int) -> None:
        path = self._directory / segment_name(number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            _make_private(fd)
        except OSError:
            # Not left behind: readers take every segment but the last for sealed and map it, and the
            # current one goes on being written (and truncated, undoing a partial write: a reader
            # touching a mapped page past its new end dies of SIGBUS); nor could the next rotation
            # create this name.
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        record = SegmentRecord(
            name=path.name,
            first_seq=self._committed.seq + 1,
            first_prev=self._committed.prev.decode("ascii"),
            opened=time.time(),
        )
        self._segment = _OpenSegment(number, path, fd, time.monotonic(), record)
        self._segments.append(record)
        for cursor in (self._committed, self._tentative):
            cursor.segment_bytes = 0
            cursor.segment_lines = 0

    def _close_segment_fd(self) -> None:
        if self._segment is not None:
            with contextlib.suppress(OSError):
                os.close(self._segment.fd)

    def _next_segment_number(self) -> int:
        numbers = [segment_number(p.name) or 0 for p in list_segments(self._directory)]
        numbers += [segment_number(r.name) or 0 for r in self._segments]
        return max(numbers, default=0) + 1

    # --- start-up --------------------------------------------------------------------------------

    def _prepare_directory(self) -> None:
        if not self._directory.exists():
            ensure_private_dir(self._directory)  # and any parent it creates: 0700 whatever the umask
        elif self._directory.stat().st_mode & 0o077:
            self._report(f"tape directory {self._directory} is accessible to other users; expected mode 0700")

    def _resume_chain(self) -> None:
        """Continue seq and chain after the last complete line on disk; a torn final line is skipped."""
        self._segments = self._load_manifest_records()
        known = {record.name: record for record in self._segments}
        for path in list_segments(self._directory):
            if path.name not in known:
                record = _describe_segment(path)
                self._segments.append(record)
                known[path.name] = record
        self._segments.sort(key=lambda r: segment_number(r.name) or 0)
        for path in reversed(list_segments(self._directory)):
            raw = last_complete_line(path)
            if raw is None:
                continue
            if not is_well_formed(raw):
                raise TapeFormatError(path.name, 0, "cannot continue the tape: its last line is malformed")
            self._committed = _Cursor(line_seq(raw), line_hash(raw))
            record = known[path.name]
            record.last_seq = self._committed.seq
            record.last_h = self._committed.prev.decode("ascii")
            break
        self._tentative = replace(self._committed)

    def _load_manifest_records(self) -> list[SegmentRecord]:
        try:
            manifest = read_manifest(self._directory)
        except ValueError as exc:
            self._report(f"ignoring unreadable tape manifest: {exc}")
            return []
        if manifest is None:
            return []
        fields = set(SegmentRecord.__slots__)
        records = []
        for entry in manifest["segments"]:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                records.append(SegmentRecord(**{k: v for k, v in entry.items() if k in fields}))
        return records

    def _install_public_key(self) -> None:
        """Put the verifying key next to the tape; a different earlier key is kept under its id so old
        checkpoints stay checkable after a key change."""
        pub = self._signing_key.public_key()
        text = (keys.public_key_text(pub) + "\n").encode("ascii")
        path = self._directory / TAPE_PUBLIC_KEY_FILE
        if path.exists():
            existing = path.read_bytes()
            if existing == text:
                return
            try:
                old_id = keys.public_key_id(keys.load_public_key(path))
                keys.write_private_file(self._directory / f"signing-key-{old_id[:16]}.pub", existing)
            except (ValueError, OSError) as exc:
                self._report(f"replacing unreadable {path.name}: {exc}")
        keys.write_private_file(path, text)

    def _save_manifest(self, *, final: bool = False) -> None:
        """Write the manifest, signed: the segments and the head of the chain as of now (`final` when
        the head is this writer's final checkpoint). Editing it breaks the signature, and `verify`
        checks that the tape still reaches the head it names; an older signed manifest put back names
        an older head, and what follows that head still needs its own final checkpoint."""
        manifest: dict[str, Any] = {
            "v": 1,
            "segments": [asdict(r) for r in self._segments],
            "key_id": self._key_id,
            "head": {"seq": self._committed.seq, "h": self._committed.prev.decode("ascii"), "final": final},
        }
        manifest["sig"] = keys.sign_manifest(self._signing_key, manifest)
        try:
            keys.write_private_file(
                self._directory / MANIFEST_FILE, orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
            )
        except OSError as exc:
            self._report(f"cannot write tape manifest: {exc}")

    def _report(self, message: str) -> None:
        if self._on_error is None:
            _log.error("%s", message)
            return
        try:
            self._on_error(message)
        except Exception:
            _log.exception("tape on_error callback failed; original message: %s", message)


def _describe_segment(path: Path) -> SegmentRecord:
    """Manifest entry rebuilt from a segment file (for tapes whose manifest is missing or stale)."""
    record = SegmentRecord(name=path.name)
    with open(path, "rb") as f:
        first = f.readline()
    if first.endswith(b"\n") and is_well_formed(first[:-1]):
        record.first_seq = line_seq(first[:-1])
        record.first_prev = line_prev(first[:-1]).decode("ascii")
    last = last_complete_line(path)
    if last is not None and is_well_formed(last):
        record.last_seq = line_seq(last)
        record.last_h = line_hash(last).decode("ascii")
    return record
