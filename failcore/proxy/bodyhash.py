"""The sha256 of a streamed body, hashed off the event loop.

A BodyTap hashed every chunk where mitmproxy hands it over, on the event loop: ~0.55 ms of the loop's
time per MiB of a big transfer (OpenSSL's sha256, BENCHMARKS.md "upload"/"bulkscan"), about a sixth of
what bare mitmdump spends per MiB, and all of it on the proxy's critical path. Here a body's chunks are
gathered into batches of BATCH bytes, each hashed by one shared thread (hashlib lets go of the GIL while
it hashes a batch, so the loop goes on meanwhile on the other core); what is left under a batch is hashed
by whoever asks for the digest (the tape writer's thread, building the exchange's event), never on the
loop. One thread hashes every body in the order their batches came, so each body's hash sees its bytes
in order. The queue is bounded: a loop that outruns the hasher by QUEUE_BATCHES waits for it, as it
waited for its own hashing before.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Final

# 1 MiB: at 256 KiB the hasher's more frequent GIL hand-backs cost the proxy ~0.2 ms more CPU per MiB of
# a 128 MiB transfer (benchmarks/bulk_bench.py, BENCHMARKS.md "bodyhash").
BATCH: Final = 1024 * 1024
QUEUE_BATCHES: Final = 16  # 16 MiB of bytes waiting to be hashed, across every body
# How long the digest waits for the hasher before giving up (the event is then recorded as failed).
DIGEST_TIMEOUT: Final = 60.0


class StreamSha256:
    """`update` from the event loop, `hexdigest` from any thread (the same interface as hashlib's)."""

    __slots__ = ("_broken", "_cond", "_hash", "_pending", "_pending_bytes", "_queued")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._queued = 0  # batches handed to the hasher, not yet hashed
        self._broken: BaseException | None = None  # what the hasher raised on one of them

    def update(self, chunk: bytes) -> None:
        with self._cond:
            self._pending.append(bytes(chunk))
            self._pending_bytes += len(chunk)
            if self._pending_bytes < BATCH:
                return
            batch = b"".join(self._pending)
            self._pending = []
            self._pending_bytes = 0
            self._queued += 1
        # (Only the loop updates a body: its batches reach the queue in the order they were made.)
        _HASHER.submit(self, batch)

    def hexdigest(self) -> str:
        with self._cond:
            if not self._cond.wait_for(lambda: self._queued == 0, DIGEST_TIMEOUT):
                raise TimeoutError(f"the body hasher did not finish within {DIGEST_TIMEOUT:.0f} s")
            if self._broken is not None:
                raise RuntimeError(f"the body's hash failed: {self._broken!r}")
            if self._pending:
                self._hash.update(b"".join(self._pending))
                self._pending = []
                self._pending_bytes = 0
            return self._hash.hexdigest()

    def _hashed(self, batch: bytes) -> None:
        """The hasher's side: this body's oldest batch (its earlier ones are hashed already)."""
        try:
            self._hash.update(batch)
        except Exception as exc:  # (the digest then raises: its event records why)
            self._broken = exc
        with self._cond:
            self._queued -= 1
            if not self._queued:
                self._cond.notify_all()


class _Hasher:
    """One daemon thread, started on the first batch, hashing batches in the order they came."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[StreamSha256, bytes]] = queue.Queue(QUEUE_BATCHES)
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def submit(self, body: StreamSha256, batch: bytes) -> None:
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    thread = threading.Thread(target=self._run, name="failcore-body-hash", daemon=True)
                    thread.start()
                    self._thread = thread
        self._queue.put((body, batch))

    def _run(self) -> None:
        while True:
            body, batch = self._queue.get()
            body._hashed(batch)


_HASHER: Final = _Hasher()
