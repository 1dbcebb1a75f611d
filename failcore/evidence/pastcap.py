"""DLP for the part of a streamed body the tape does not keep.

The tape keeps the first `failcore_body_cap` bytes of a body, and evidence scanning covers those. An
upload or download past the cap streams through without being kept, so a secret at byte 5,000,000 of
an upload would go unseen. `PastCapScan` watches such a stream: once it passes the cap it hands each
chunk (with an overlap, so a secret straddling two chunks or the cap itself is found) to one worker
thread, off the event loop. Hits carry their byte offset, since no recorded text holds them.

The worker scans each batch with `failcore.dlp.stream.scan_bulk`: a batch of text whole, a binary one
(an archive, model weights) only where it holds runs of text, so a large download costs the worker a
small share of its bytes instead of several full rule passes per byte, and keeps up with the stream.

The worker's queue is bounded: when it is full the scan of that body stops and says so, rather than
hold chunks or slow the stream.

Given the policy's ScanOrigin, the batches go to a separate process instead (failcore.evidence.
pastcapworker: shared-memory slots, one copy per batch), so the scan does not hold the proxy's GIL;
the worker thread scans while that process starts, when every one of its slots is taken (it fell
behind), or if it refuses the policy or is lost for good. Only when both are full does a scan stop.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from failcore.dlp import DlpEngine, Hit
from failcore.dlp.stream import scan_bulk
from failcore.evidence import pastcapworker
from failcore.evidence.body import (
    MAX_DECODED_BYTES,
    MAX_ENCODINGS,
    _stage,
    content_encodings,
    decoded_steps,
    is_encoded,
)
from failcore.evidence.findings import PastCapFindings

if TYPE_CHECKING:
    from failcore.evidence.scanworker import ScanOrigin

logger = logging.getLogger("failcore")

# OVERLAP and BATCH_BYTES live with the scan process's slots (pastcapworker), which are sized by them.
OVERLAP = pastcapworker.OVERLAP
MAX_HITS = 100
# At most QUEUE_CHUNKS batches wait for the worker (~16 MiB).
QUEUE_CHUNKS = 16
BATCH_BYTES = pastcapworker.BATCH_BYTES


class PastCapScan:
    """A stream observer (see BodyTap.observers) for one body: scans what lies past `cap`."""

    __slots__ = (
        "base",
        "batch",
        "cap",
        "done",
        "engine",
        "filled",
        "hits",
        "inline",
        "note",
        "origin",
        "pending",
        "seen",
        "tail",
        "where",
    )

    def __init__(
        self,
        engine: DlpEngine,
        cap: int,
        where: str,
        *,
        compressed: bool = False,
        inline: bool = False,
        origin: ScanOrigin | None = None,
    ) -> None:
        self.engine = engine
        # Where a scan process can rebuild `engine` (None: scan in this process).
        self.origin = origin
        # Scan in the caller's thread instead of the worker's (a body held whole, scanned off the loop).
        self.inline = inline
        self.cap = cap
        self.where = where
        self.seen = 0
        # Bytes before `batch` kept so a secret across a batch boundary is whole in one scan.
        self.tail = b""
        # Bytes past the cap not handed to the worker yet (small chunks are scanned together): the first
        # `filled` bytes of a buffer of BATCH_BYTES, allocated once. (Emptied and grown again per batch,
        # a bytearray cost ~0.9 ms of CPU per MiB in reallocations and page faults; copies into a
        # buffer of fixed size ~0.06.)
        self.batch: bytearray | bytes = b""
        self.filled = 0
        self.base = 0  # stream offset of tail + batch
        self.hits: dict[tuple[str, int, int], Hit] = {}
        self.pending = 0
        self.done = threading.Condition()
        # Why the part past the cap was not (wholly) scanned; None while the scan is whole.
        self.note: str | None = (
            "compressed stream: the part past the recorded cap is not scanned" if compressed else None
        )

    @property
    def passed_cap(self) -> bool:
        return self.seen > self.cap

    def __call__(self, chunk: bytes) -> None:
        start = self.seen
        self.seen += len(chunk)
        if self.note is not None or self.seen <= self.cap - OVERLAP:
            return
        if not self.filled and start < self.cap:
            # Still (partly) inside the recorded part: keep the overlap, and batch what is past the cap.
            joined = self.tail + chunk
            self.base = start - len(self.tail)
            keep = max(0, min(len(joined), self.cap - self.base))
            self.tail = joined[max(0, keep - OVERLAP) : keep]
            self.base += max(0, keep - OVERLAP)
            rest = memoryview(joined)[keep:]
        else:
            rest = memoryview(chunk)
        if not self.batch and rest:
            self.batch = bytearray(BATCH_BYTES)
        while rest:  # batches of at most BATCH_BYTES (a scan process's slot holds one)
            size = min(len(rest), BATCH_BYTES - self.filled)
            self.batch[self.filled : self.filled + size] = rest[:size]
            self.filled += size
            rest = rest[size:]
            if self.filled == BATCH_BYTES:
                self._hand_over()
                if self.note is not None:
                    return

    def _hand_over(self) -> None:
        with memoryview(self.batch) as whole, whole[: self.filled] as batch:
            self._hand(batch)
        self.filled = 0

    def _hand(self, batch: memoryview) -> None:
        tail, base = self.tail, self.base
        batch_start = base + len(tail)
        end = batch_start + len(batch)
        self.tail = bytes(batch[-OVERLAP:]) if len(batch) >= OVERLAP else (tail + batch)[-OVERLAP:]
        self.base = end - len(self.tail)
        if self.inline:
            self.scan_here(b"".join((tail, batch)), base)
            return
        with self.done:
            self.pending += 1
        try:
            process = pastcapworker.scan_process(self.origin)
            accepted = process is not None and process.submit(self, tail, batch, base)  # into shared memory
        except Exception:  # on the event loop, in the stream: it must never break the transfer
            logger.exception("failcore: the past-cap DLP scan process failed; scanning in-process")
            accepted = False
        if not accepted:
            # No scan process, or every slot taken (it is behind: a busy machine): the worker thread
            # takes the batch, in this process (which it slows, as it did before the scan process).
            buffer = b"".join((tail, batch))  # the one copy of these bytes
            accepted = _worker().submit(self, buffer, base)
        if not accepted:
            with self.done:
                self.pending -= 1
                self.note = f"scan queue full: stopped scanning at byte {batch_start}"
                self.done.notify_all()

    def scan_here(self, buffer: bytes, base: int) -> None:
        """Scan in the calling thread (counted as pending like a queued scan, which scan_now ends)."""
        with self.done:
            self.pending += 1
        self.scan_now(buffer, base)

    def scan_now(self, buffer: bytes, base: int) -> None:
        """Runs in the worker thread (or the caller's, for the last batch)."""
        try:
            hits = scan_bulk(self.engine, buffer)
        except Exception as e:  # a scan failure must not lose the others' scans
            self.record([], base, f"scan failed: {type(e).__name__}: {e}"[:300])
        else:
            self.record(hits, base, None)

    def record(self, hits: list[Hit], base: int, error: str | None) -> None:
        """One batch's scan is done (here, in the worker thread or in the scan process): keep its hits
        past the recorded part, with offsets in the body."""
        for hit in hits:
            if base + hit.end <= self.cap or len(self.hits) >= MAX_HITS:
                continue  # inside the recorded part: evidence scanning reports it with its JSON pointer
            self.hits.setdefault((hit.rule_id, base + hit.start, base + hit.end), hit)
        with self.done:
            if error is not None:
                self.note = error
            self.pending -= 1
            self.done.notify_all()

    def lost(self, why: str) -> None:
        """One batch will never be scanned (the scan process died holding it): say so, stop scanning."""
        with self.done:
            if self.note is None:
                self.note = why
            self.pending -= 1
            self.done.notify_all()

    def results(self, timeout: float = 10.0) -> tuple[list[tuple[int, Hit]], dict[str, Any]]:
        """Scan the last batch (the stream has ended: in the scan process, or here), wait for the
        others, then (offset, hit) pairs and what part of the body past the cap was covered. Called off
        the event loop: the evidence of an exchange with a past-cap scan is built in the writer's thread."""
        if self.filled and self.note is None:
            with memoryview(self.batch) as whole, whole[: self.filled] as batch:
                with self.done:
                    self.pending += 1
                try:
                    process = None if self.inline else pastcapworker.scan_process(self.origin)
                    accepted = process is not None and process.submit(self, self.tail, batch, self.base)
                except Exception:
                    logger.exception("failcore: the past-cap DLP scan process failed; scanning here")
                    accepted = False
                if not accepted:
                    with self.done:
                        self.pending -= 1
                    self.scan_here(b"".join((self.tail, batch)), self.base)
        self.batch, self.filled = b"", 0
        with self.done:
            finished = self.done.wait_for(lambda: self.pending == 0, timeout)
        if not finished:
            # A stopped or hung scan process: killed (its batches said lost) rather than handed the
            # next body's batches too.
            pastcapworker.give_up_on(self, f"no reply within {timeout}s")
            with self.done:
                finished = self.done.wait_for(lambda: self.pending == 0, 1.0)
        note = self.note if finished else f"scan did not finish within {timeout}s"
        found = sorted(((start, hit) for (_, start, _), hit in list(self.hits.items())), key=lambda p: p[0])
        coverage = {
            "where": self.where,
            "from_byte": self.cap,
            "to_byte": self.seen,
            "complete": note is None,
            "note": note,
        }
        return found, coverage

    def findings(self, timeout: float = 10.0) -> PastCapFindings:
        """results() as plain data (what the DLP evidence worker is sent with the exchange's event)."""
        found, coverage = self.results(timeout)
        return PastCapFindings(self.where, self.cap, tuple(found), coverage)


def scan_held_body(
    engine: DlpEngine, cap: int, where: str, content: bytes, encoding: str | None
) -> PastCapScan | None:
    """The past-cap scan of a body held whole (buffered, e.g. a large LLM request), run in the calling
    thread (the tape writer's). None when the decoded body fits in the cap."""
    scan = PastCapScan(engine, cap, where, inline=True)
    if not is_encoded(encoding):
        if len(content) <= cap:
            return None
        scan.seen = len(content)
        start = max(0, cap - OVERLAP)
        scan.scan_here(content[start:], start)
        return scan
    try:
        for piece in decoded_steps(content, (encoding or "").strip().lower()):
            scan(piece)
            if scan.seen >= MAX_DECODED_BYTES:
                scan.note = f"decoding stopped at {MAX_DECODED_BYTES} bytes"
                break
    except Exception as e:  # a corrupt body is reported by its evidence; say why the scan stopped
        scan.note = f"body could not be decoded past byte {scan.seen}: {type(e).__name__}"
    return scan if scan.passed_cap else None


class StreamDecoder:
    """Undoes a body's Content-Encoding (every stacked coding, every gzip member or zstd frame) as its
    chunks pass, in bounded pieces, for scans that must see what the receiver will decode: the same
    stages as decoded_steps, fed incrementally. Raises what decoded_steps raises (DECODE_ERRORS).
    `salvage=False`: what a failing input decoded to before its error is not recovered (a reader that
    only counts, and counts such input by its wire bytes; failcore.proxy.streamcopy.StreamInflater)."""

    __slots__ = ("stages",)

    def __init__(self, encoding: str | None, salvage: bool = True) -> None:
        codings = content_encodings(encoding)
        if len(codings) > MAX_ENCODINGS:
            raise ValueError(f"{len(codings)} stacked content-encodings (at most {MAX_ENCODINGS} decoded)")
        self.stages = [_stage(c, salvage) for c in reversed(codings)]

    def feed(self, data: bytes) -> Iterator[bytes]:
        return self._push(0, data)

    def finish(self) -> Iterator[bytes]:
        for level, stage in enumerate(self.stages):
            for out in stage.finish():
                yield from self._push(level + 1, out)

    def _push(self, level: int, piece: bytes) -> Iterator[bytes]:
        if level == len(self.stages):
            if piece:
                yield piece
            return
        for out in self.stages[level].feed(piece):
            yield from self._push(level + 1, out)


class _Worker:
    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[PastCapScan, bytes, int]] = queue.Queue(QUEUE_CHUNKS)
        self.thread = threading.Thread(target=self._run, name="failcore-dlp-past-cap", daemon=True)
        self.thread.start()

    def submit(self, scan: PastCapScan, buffer: bytes, base: int) -> bool:
        try:
            self.queue.put_nowait((scan, buffer, base))
        except queue.Full:
            return False
        return True

    def _run(self) -> None:
        while True:
            scan, buffer, base = self.queue.get()
            scan.scan_now(buffer, base)


_worker_lock = threading.Lock()
_the_worker: _Worker | None = None


def _worker() -> _Worker:
    global _the_worker
    if _the_worker is None:
        with _worker_lock:
            if _the_worker is None:
                _the_worker = _Worker()
    return _the_worker
