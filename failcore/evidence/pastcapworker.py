"""The past-cap scan (failcore.evidence.pastcap) in a separate process, off the proxy's GIL.

Measured on a 2-core AMD EPYC (BENCHMARKS.md, branches upload and upload2): a 128 MiB HTTPS upload
cost the proxy 16.1 ms of CPU per MiB against bare mitmdump's 11.8, and the whole difference was the
past-cap scan of the binary body (`scan_bulk`, ~2.5-2.9 ms per MiB, run by a thread of the proxy
process, so holding its GIL). Here each 1 MiB batch is copied once into a shared-memory slot and a
16-byte request goes down a pipe; a child process (`python -m failcore.evidence.pastcapworker`)
scans the slot in place (no copy of it; its runs of text found by Hyperscan, see scan_bulk) with the
same `scan_bulk` and the same rules and salt (rebuilt from the policy file, like the DLP evidence
worker, failcore.evidence.scanworker), zeroes it, and sends the hits back as one orjson frame; a
reader thread of the proxy gives them to the body's PastCapScan.

- Bounded: SLOTS batches in flight at most. With every slot taken (the child is behind: on a busy
  machine it gets less CPU than the stream needs) the batch goes to the in-process worker thread,
  whose GIL share slows the proxy as before; with its queue full too, the body's scan stops and its
  event says where ("scan queue full").
- Nothing secret on disk: the slots live in an anonymous memfd (no name in any file system), shared
  with the child only through an inherited descriptor; the child zeroes a slot before it answers, and
  the proxy zeroes the slots of a child that died. Hits hold masked previews and salted fingerprints,
  as on the tape. No pickle: fixed-size structs one way, plain JSON the other.
- Fail-open: nothing waits for the child. While it starts (or refuses the policy) the batches go to
  the in-process worker thread as before; when it dies, the batches it held are reported unscanned in
  their exchanges' events (never silently), it is logged, and it is started again at most every
  RESTART_INTERVAL seconds and at most MAX_LOSSES times (then the in-process worker for the rest of
  the run). FAILCORE_PAST_CAP_PROCESS=0 keeps the scan in-process.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from failcore.dlp.decode import MAX_CANDIDATE_BYTES
from failcore.dlp.model import Hit
from failcore.evidence.scanworker import (
    ScanOrigin,
    _scanner_for,
    origin_config,
    rules_sha256,
    spawn_worker,
)
from failcore.evidence.workerpipe import read_exact, read_frame, write_frame

if TYPE_CHECKING:
    from failcore.policy.model import Policy

logger = logging.getLogger("failcore")

# Batches in flight at most (each a slot of OVERLAP + BATCH_BYTES bytes, ~16 MiB in all).
SLOTS = 16
# slot, length, sequence number (a reply names both, so a late reply can never land on a reused slot).
_REQUEST = struct.Struct(">IIQ")
RESTART_INTERVAL = 2.0
MAX_LOSSES = 5


# A batch's bytes carried over from the one before (a secret across the seam is whole in one batch):
# at least the longest base64/hex run the engine decodes, so such a run crossing the seam (or the
# recording cap) is decoded from its first byte, as a scan of the whole body would (from a byte
# inside it, the decoding is out of step and finds nothing), plus room for a rule's own context.
OVERLAP = MAX_CANDIDATE_BYTES + 1024
# Fresh bytes collected before a scan is handed over: small chunks are not scanned one by one, and each
# batch costs a few GIL handoffs with a busy event loop, so batches are large.
BATCH_BYTES = 1024 * 1024


class BatchOwner(Protocol):
    """What a body's scan (failcore.evidence.pastcap.PastCapScan) is told about its batches."""

    def record(self, hits: list[Hit], base: int, error: str | None) -> None: ...

    def lost(self, why: str) -> None: ...


def _slot_bytes() -> int:
    return OVERLAP + BATCH_BYTES


# --- the child ----------------------------------------------------------------------------------


def child_main() -> int:
    """A config frame (the ScanOrigin, the memfd's descriptor), then one reply per request."""
    from failcore.dlp.stream import scan_bulk

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd = sys.stdin.fileno()
    out = sys.stdout.buffer
    try:
        config = read_frame(fd)
    except EOFError:
        return 0
    try:
        slots, slot_bytes = int(config["slots"]), int(config["slot_bytes"])
        memory = mmap.mmap(int(config["memfd"]), slots * slot_bytes)
        os.close(int(config["memfd"]))
        engine = _scanner_for(config).engine
    except Exception as exc:
        write_frame(out, {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
        return 1
    write_frame(out, {"ok": True})
    zeros = memoryview(bytes(slot_bytes))
    # The slot is scanned where it lies, its runs of text found by Hyperscan (this process has its GIL to
    # itself): no 1 MiB copy per batch (with the translated copy of the text-run search, two fresh 1 MiB
    # buffers per batch cost ~480 page faults and 0.5-0.9 ms of system CPU per MiB on a 2-core AMD EPYC).
    # scan_bulk copies only the windows of text it scans.
    shared = memoryview(memory)
    while True:
        try:
            slot, length, sequence = _REQUEST.unpack(read_exact(fd, _REQUEST.size, None))
        except EOFError:
            return 0
        if slot >= slots or length > slot_bytes:
            write_frame(out, [slot, sequence, [], "malformed request"])
            continue
        start = slot * slot_bytes
        error = None
        found: list[list[Any]] = []
        try:
            with shared[start : start + length] as data:
                found = [
                    [h.rule_id, h.severity, h.category, h.start, h.end, h.preview, h.fingerprint]
                    for h in scan_bulk(engine, data, hyperscan=True)
                ]
        except Exception as exc:
            error = f"scan failed: {type(exc).__name__}: {exc}"[:300]
        finally:
            shared[start : start + length] = zeros[:length]  # the batch does not outlive its scan
        write_frame(out, [slot, sequence, found, error])


# --- the proxy's side ---------------------------------------------------------------------------


class ScanProcess:
    """One child and its shared slots, for one ScanOrigin. `submit` runs on the event loop; a reader
    thread takes the replies."""

    def __init__(self, origin: ScanOrigin) -> None:
        self.origin = origin
        self.slot_bytes = _slot_bytes()
        self.lock = threading.Lock()
        self.ready = False
        self.dead = False
        self.closing = False
        self.refused: str | None = None
        self.free = list(range(SLOTS))
        self.in_flight: dict[int, tuple[BatchOwner, int, int, int, int]] = {}
        self.sequence = 0
        self.scanned = 0  # batches the child has answered
        size = SLOTS * self.slot_bytes
        self.memfd = os.memfd_create("failcore-past-cap", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.memfd, size)
            self.memory = mmap.mmap(self.memfd, size)
            self.process = spawn_worker("failcore.evidence.pastcapworker", pass_fds=(self.memfd,))
        except BaseException:
            os.close(self.memfd)
            raise
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in = self.process.stdin.fileno()
        config = {
            **origin_config(origin),
            "memfd": self.memfd,
            "slots": SLOTS,
            "slot_bytes": self.slot_bytes,
        }
        with contextlib.suppress(OSError):
            write_frame(self.process.stdin, config)
        self.reader = threading.Thread(target=self._read, name="failcore-past-cap-reader", daemon=True)
        self.reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def submit(self, scan: BatchOwner, head: bytes, body: bytes | bytearray, base: int) -> bool | None:
        """Copy head + body (one batch, with its overlap) into a free slot and ask for its scan. True:
        asked (the scan's pending count is the caller's, decremented when the reply or the child's death
        comes); False: every slot is taken; None: no child to ask (starting, refused or dead)."""
        length = len(head) + len(body)
        with self.lock:
            if not self.ready or self.dead or self.closing or length > self.slot_bytes:
                return None
            if not self.free:
                return False
            slot = self.free.pop()
            self.sequence += 1
            start = slot * self.slot_bytes
            try:
                self.memory[start : start + len(head)] = head
                self.memory[start + len(head) : start + length] = body
            except BaseException:
                self.free.append(slot)
                raise
            self.in_flight[slot] = (scan, base, self.sequence, base + len(head), base + length)
            # Under the lock: close() closes the pipe under it too, so this never writes to a
            # descriptor number the system has since given to another file.
            try:
                os.write(self._in, _REQUEST.pack(slot, length, self.sequence))  # 16 bytes: never blocks
                return True
            except OSError:
                pass
        self._died("its pipe is closed")
        return True

    def _read(self) -> None:
        fd = self.process.stdout.fileno()  # type: ignore[union-attr]
        try:
            hello = read_frame(fd)
            if not (isinstance(hello, dict) and hello.get("ok") is True):
                self.refused = str(hello.get("error") if isinstance(hello, dict) else hello)
                logger.warning(
                    "failcore: the past-cap DLP scan process refused the policy (%s); scanning in-process",
                    self.refused,
                )
                self._died(None)
                return
            self.ready = True
            while True:
                slot, sequence, found, error = read_frame(fd)
                with self.lock:
                    entry = self.in_flight.get(slot)
                    if entry is None or entry[2] != sequence:
                        continue
                    del self.in_flight[slot]
                    self.free.append(slot)
                    self.scanned += 1
                scan, base = entry[0], entry[1]
                hits = [Hit(*fields) for fields in found]
                scan.record(hits, base, error)
        except Exception as exc:  # end of file (it exited or was killed) or a malformed frame
            self._died(None if self.closing else f"{type(exc).__name__}: {exc}")

    def _died(self, why: str | None) -> None:
        """The child is gone: the batches it held are reported unscanned, their slots zeroed."""
        with self.lock:
            if self.dead:
                return
            self.dead = True
            lost = list(self.in_flight.values())
            self.in_flight.clear()
            self.memory[:] = bytes(len(self.memory))
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        if why is not None:
            logger.warning(
                "failcore: the past-cap DLP scan process was lost (%s, exit %s)", why, self.process.returncode
            )
        for scan, _, _, first, last in lost:
            scan.lost(f"scan process lost (exit {self.process.returncode}): bytes {first}-{last} not scanned")

    def close(self) -> None:
        """Let the child finish what it holds and exit (its stdin closes), then free the slots."""
        with self.lock, contextlib.suppress(OSError):
            self.closing = True
            self.process.stdin.close()  # type: ignore[union-attr]
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join(5)
        self._died(None)
        with self.lock:
            self.memory.close()
            os.close(self.memfd)


class _Manager:
    """The one scan process of this proxy: started on the first past-cap batch, restarted when lost."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current: ScanProcess | None = None
        self.losses = 0
        self.next_start = 0.0
        self.refused: set[ScanOrigin] = set()

    def get(self, origin: ScanOrigin) -> ScanProcess | None:
        current = self.current
        if current is not None and current.origin == origin and current.ready and not current.dead:
            return current
        if origin in self.refused:
            return None
        with self.lock:
            current = self.current
            if current is not None and current.origin != origin:
                threading.Thread(target=current.close, daemon=True).start()
                current = self.current = None
            if current is not None and current.dead:
                if current.refused is None:
                    self.losses += 1
                else:
                    self.refused.add(current.origin)  # the policy file changed: in-process from now on
                threading.Thread(target=current.close, daemon=True).start()
                current = self.current = None
            if current is None and self.losses < MAX_LOSSES and time.monotonic() >= self.next_start:
                self.next_start = time.monotonic() + RESTART_INTERVAL
                try:
                    self.current = ScanProcess(origin)
                except Exception as exc:  # (OSError: no memfd, no fork; the in-process worker scans)
                    self.losses += 1
                    logger.warning("failcore: could not start the past-cap DLP scan process: %s", exc)
            return None  # starting: the in-process worker scans meanwhile

    def close(self) -> None:
        with self.lock:
            current, self.current = self.current, None
        if current is not None:
            current.close()


_manager = _Manager()


def scan_process(origin: ScanOrigin | None) -> ScanProcess | None:
    """The ready scan process for this origin, or None (the caller scans in-process); starts one."""
    if origin is None or not hasattr(os, "memfd_create"):
        return None
    if os.environ.get("FAILCORE_PAST_CAP_PROCESS", "1") == "0":
        return None
    return _manager.get(origin)


def close() -> None:
    _manager.close()


def give_up_on(owner: BatchOwner, why: str) -> None:
    """The scan process holds batches of `owner` and has not answered in time (stopped or hung): it is
    killed, every batch it held is reported lost (`owner.lost`), and a new one starts later."""
    current = _manager.current
    if current is None or current.dead:
        return
    with current.lock:
        holds = any(entry[0] is owner for entry in current.in_flight.values())
    if holds:
        current._died(why)


def origin_for(policy: Policy | None, salt: bytes) -> ScanOrigin | None:
    """Where the scan process rebuilds the scanner of `policy` (None: a policy without a file).

    Asked at every streamed body's headers: remembered per policy object (frozen, one per load) and
    salt. Digesting its rules costs ~0.5 ms (`policy_rules` builds a new tuple each time, so
    rules_sha256's own memory never hits), measured on the event loop per streamed LLM answer by
    benchmarks/llm_exchange_cost.py."""
    if policy is None or not salt or not os.path.isfile(policy.source):
        return None
    known = _ORIGINS.get(id(policy))
    if known is not None and known[0] is policy and known[1] == salt:
        return known[2]
    from failcore.dlp.rules import policy_rules

    rules = rules_sha256(policy_rules(policy))
    origin = ScanOrigin(os.path.abspath(policy.source), policy.sha256, policy.mode, salt, rules)
    if len(_ORIGINS) >= 16:
        _ORIGINS.clear()
    _ORIGINS[id(policy)] = (policy, salt, origin)
    return origin


# id(policy) -> (the policy, the salt, its origin): the policy is held, so its id is not reused.
_ORIGINS: dict[int, tuple[Policy, bytes, ScanOrigin]] = {}


if __name__ == "__main__":
    sys.exit(child_main())
