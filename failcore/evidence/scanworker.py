"""DLP evidence scans in a separate process, so they do not hold the proxy's event loop or GIL.

Measured on a 2-core AMD EPYC: building one keep-alive 1 KB JSON exchange's event costs ~60 µs without
DLP and ~400 µs with it (nine engine scans: URL, header names and values, both bodies), all of it on the
proxy's critical core. Here the event is built without its DLP pass (`DeferredScan`), and the tape
writer's thread hands a batch of them to a child process (`python -m failcore.evidence.scanchild`),
which runs exactly the same `scan_event` with the same rules and salt and sends the masked events back.

Nothing depends on the child: a `DeferredScan` is also a builder the tape writer can call itself, which
is what happens while the child starts, when it refuses the policy, when an event cannot be framed,
and when it dies (recorded on the tape as an internal_error, then restarted). No evidence is lost or
written unmasked because of it. Only DLP *evidence* moves: every blocking decision is still taken on
the request path, in the proxy, before anything leaves.

An exchange whose body streamed past the recorded cap goes to the child too: its past-cap scan
(failcore.evidence.pastcap) has already run (in the past-cap scan process), and only its results travel
with the event, as plain data (`PastCapFindings`: offsets and hits). A secret straddling the cap is
masked by the proxy as it builds the event (by its offset, before any other mask moves the recorded
text); the child masks the rest of the recorded part and places those hits exactly as the in-process
pass would (`scan_event`). Measured (BENCHMARKS.md,
branch pastcapev): the full scan of such an exchange's recorded 1 MiB binary body, ~30 ms of CPU alone
and ~110 ms in a busy proxy, held the proxy's GIL for most of it (Hyperscan releases it while it scans;
base64, the decoded views and the joins around it do not).

The child also builds an exchange's whole event (plain, streamed or an LLM call, without a past-cap scan:
failcore.evidence.remotebuild): the proxy then only takes the exchange's snapshot, and gets the event
back as the bytes of its tape line (SERIALISED; failcore.tape.serialised).

The pipe carries length-prefixed orjson frames of plain JSON (no pickle); the child reads its stdin,
writes its stdout, opens no socket and never sees the tape or the signing key.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from failcore.event import EgressEvent
from failcore.evidence.dlp import Echoes, scan_event
from failcore.evidence.findings import PastCapFindings
from failcore.evidence.workerpipe import LENGTH, FrameReader, ready, widen_pipe, write_all, write_frame
from failcore.spawn import start_worker
from failcore.tape.serialised import SerialisedEvent

if TYPE_CHECKING:
    from collections.abc import Callable

    from failcore.dlp.model import DlpRule
    from failcore.dlp.scanner import DlpScanner

logger = logging.getLogger("failcore")

# One frame holds at most this many events (a batch is split into several frames).
MAX_FRAME_EVENTS = 256
# A batch the child takes no input of, or does not answer, for this long means it is stuck: it is
# killed and the batch scanned in-process.
REPLY_TIMEOUT = 30.0
# The reply for an event the scan left exactly as it was.
UNCHANGED = 0
# A reply item: the event (an exchange the child built whole) follows the reply as a frame of its own,
# the orjson bytes the tape writer would have made of it (failcore.tape.serialised).
SERIALISED = 1
# A dead child is started again at most this often, and not at all after this many losses (the
# writer then scans in-process for the rest of the run; each loss is on the tape).
RESTART_INTERVAL = 2.0
MAX_LOSSES = 5


@dataclass(frozen=True, slots=True)
class ScanOrigin:
    """What the child needs to build the very scanner the proxy uses: the policy file, checked by its
    SHA-256 (a file changed since is refused, never scanned with other rules), the mode and the salt,
    and the digest of the rules the proxy's scanner has: a file the policy imports (`import_gitleaks`)
    is read again by the child, so an edit of it since is refused too."""

    policy_path: str
    policy_sha256: str
    mode: str
    salt: bytes
    rules_sha256: str = ""


def rules_sha256(rules: Sequence[DlpRule] | None) -> str:
    """A digest of a rule set, every field of every rule (imported rules included); remembered per
    rule-set object (a policy's rules are built once per load)."""
    if not rules:
        return ""
    key = id(rules)
    known = _RULE_DIGESTS.get(key)
    if known is not None and known[0] is rules:
        return known[1]
    digest = hashlib.sha256(b"failcore-dlp-rules/1")
    for rule in rules:
        text = repr(rule).encode("utf-8", "surrogatepass")
        digest.update(len(text).to_bytes(8, "big") + text)
    if len(_RULE_DIGESTS) >= 16:
        _RULE_DIGESTS.clear()
    _RULE_DIGESTS[key] = (rules, digest.hexdigest())
    return _RULE_DIGESTS[key][1]


_RULE_DIGESTS: dict[int, tuple[Sequence[DlpRule], str]] = {}


class ChildWork:
    """What the tape writer's batch hook hands to the child: a DeferredScan, or a whole exchange to build
    (failcore.evidence.remotebuild). Each is also a builder the writer calls when the child cannot help."""

    __slots__ = ()
    # Where the child rebuilds the scanner from (None: never handed over).
    origin: ScanOrigin | None
    # What "unchanged" stands for in the child's answer (None: the answer is always the whole event).
    event: dict[str, Any] | None

    def frame_item(self) -> dict[str, Any] | list[Any]:
        """What the child is sent for it."""
        raise NotImplementedError

    def frame_bytes(self) -> bytes:
        """frame_item as the JSON the child reads (raises TypeError for what orjson refuses)."""
        return orjson.dumps(self.frame_item())


class DeferredScan(ChildWork):
    """An event built without its DLP pass. Called (by the tape writer, as any builder), it runs the
    pass in this process; the scan worker runs it in the child instead. `past_cap`: the finished
    past-cap scans of its bodies, whose hits the pass places in the event."""

    __slots__ = ("echoes", "event", "on_error", "origin", "past_cap", "scanner")

    def __init__(
        self,
        event: dict[str, Any],
        scanner: DlpScanner,
        origin: ScanOrigin | None,
        past_cap: tuple[PastCapFindings, ...] = (),
        echoes: Echoes = None,
    ) -> None:
        self.event = event
        self.echoes = echoes if echoes is not None and echoes[0] else None
        self.scanner = scanner
        self.origin = origin
        self.past_cap = past_cap
        # What stands for the event when the pass here fails (None: the exception propagates).
        self.on_error: Callable[[Exception], dict[str, Any]] | None = None

    def __call__(self) -> dict[str, Any]:
        try:
            scan_event(self.scanner, self.event, self.past_cap, self.echoes)
        except Exception as exc:
            if self.on_error is None:
                raise
            return self.on_error(exc)
        return self.event

    def frame_item(self) -> dict[str, Any] | list[Any]:
        """What the child is sent: the event, or [event, past-cap findings] when it has some, or [event,
        past-cap findings, echoed credentials (hex), their salt (hex)] when it has echoes to mask."""
        if not self.past_cap and self.echoes is None:
            return self.event
        findings = [findings.to_wire() for findings in self.past_cap]
        if self.echoes is None:
            return [self.event, findings]
        return [self.event, findings, [secret.hex() for secret in self.echoes[0]], self.echoes[1].hex()]


class BuildFirst:
    """A builder the scan worker's batch hook calls before it hands the batch over (an exchange built
    in the writer's thread, whose event may come back as a DeferredScan); called as any builder (no
    hook, or a hook that failed), it also runs that DeferredScan's pass. Built once either way."""

    __slots__ = ("_build", "_built")

    def __init__(self, build: Callable[[], dict[str, Any] | DeferredScan]) -> None:
        self._build = build
        self._built: dict[str, Any] | DeferredScan | None = None

    def build(self) -> dict[str, Any] | DeferredScan:
        if self._built is None:
            self._built = self._build()
        return self._built

    def __call__(self) -> dict[str, Any]:
        built = self.build()
        return built() if isinstance(built, DeferredScan) else built


# --- the child ----------------------------------------------------------------------------------


def _scanner_for(config: dict[str, Any]) -> DlpScanner:
    from failcore.dlp.pending import wait_until_built
    from failcore.dlp.rules import policy_rules
    from failcore.dlp.scanner import DlpScanner
    from failcore.policy.load import load_policy, with_mode

    policy = with_mode(load_policy(config["policy_path"]), config["mode"])
    if policy.sha256 != config["policy_sha256"]:
        raise ValueError("the policy file changed since the proxy loaded it")
    if rules_sha256(policy_rules(policy)) != config.get("rules_sha256"):
        raise ValueError("the DLP rules the policy imports changed since the proxy loaded it")
    scanner = DlpScanner.for_policy(policy, bytes.fromhex(config["salt"]))
    if scanner is None:
        raise ValueError("the policy has DLP disabled")
    wait_until_built(scanner.engine)
    return scanner


# --- the proxy's side ---------------------------------------------------------------------------


def spawn_worker(module: str, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    """A worker child (`python -P -m module`, failcore.spawn) talking frames over its stdin and stdout.
    (PYTHONDONTWRITEBYTECODE=1 is not forced: where failcore had no cache yet, every worker compiled
    failcore from source at its start.)"""
    # Its own session: a Ctrl-C or a signal to the proxy's process group is the proxy's to handle; the
    # child ends when its stdin closes (the proxy exits or dies).
    return start_worker(module, pass_fds=pass_fds, own_session=True)


def origin_config(origin: ScanOrigin) -> dict[str, Any]:
    """The first frame a worker child reads: where to rebuild the scanner, and how to check it."""
    return {
        "policy_path": origin.policy_path,
        "policy_sha256": origin.policy_sha256,
        "rules_sha256": origin.rules_sha256,
        "mode": origin.mode,
        "salt": origin.salt.hex(),
    }


class ScanWorker:
    """One child process for one ScanOrigin. Used only from the tape writer's thread."""

    def __init__(self, origin: ScanOrigin) -> None:
        self.origin = origin
        self.process = spawn_worker("failcore.evidence.scanchild")
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in = self.process.stdin
        self._out = self.process.stdout.fileno()
        self._reader = FrameReader(self._out)
        self.ready = False
        self.refused: str | None = None
        config = origin_config(origin)
        # A child that died at once shows as end of file when its handshake is read.
        with contextlib.suppress(OSError):
            write_frame(self._in, config)
        # Batches are written with a deadline (see scan): the pipe never blocks the tape writer.
        self._in_fd = self._in.fileno()
        os.set_blocking(self._in_fd, False)
        widen_pipe(self._in_fd)
        widen_pipe(self._out)

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll_ready(self) -> bool:
        """Whether the child has its scanner; never waits."""
        if self.ready or self.refused is not None:
            return self.ready
        if self._reader.buffered() or ready(self._out, select.POLLIN, time.monotonic()):
            reply = self._reader.read_frame(time.monotonic() + REPLY_TIMEOUT)
            if isinstance(reply, dict) and reply.get("ok") is True:
                self.ready = True
            else:
                self.refused = str(reply.get("error") if isinstance(reply, dict) else reply)
        return self.ready

    def scan(self, scans: Sequence[ChildWork]) -> list[dict[str, Any] | SerialisedEvent | None]:
        """The scans' events, scanned and masked (an event the scan left as it was is returned itself;
        None: scan it yourself). Raises when the child is gone."""
        try:
            # (as orjson.dumps of the list of frame items: an item may have been serialised already)
            data = b"[" + b",".join([scan.frame_bytes() for scan in scans]) + b"]"
        except TypeError:  # (a text orjson refuses: no fault of the child's)
            return [None] * len(scans)
        # A stuck child stops reading: a frame larger than the pipe's buffer times out as a reply does.
        write_all(self._in_fd, LENGTH.pack(len(data)) + data, time.monotonic() + REPLY_TIMEOUT)
        deadline = time.monotonic() + REPLY_TIMEOUT
        reply = self._reader.read_frame(deadline)
        if not isinstance(reply, list) or len(reply) != len(scans):
            raise ValueError("malformed reply from the DLP evidence worker")
        out: list[dict[str, Any] | SerialisedEvent | None] = []
        for item, scan in zip(reply, scans, strict=True):
            if isinstance(item, dict):
                out.append(item)
            elif type(item) is not int:
                out.append(None)
            elif item == UNCHANGED:
                out.append(scan.event)
            elif item == SERIALISED:
                out.append(_serialised(self._reader.read_raw_frame(deadline)))
            else:
                out.append(None)
        return out

    def close(self, timeout: float = 5.0) -> int | None:
        with contextlib.suppress(OSError):
            self._in.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(OSError):
            self.process.stdout.close()  # type: ignore[union-attr]
        return self.process.returncode


class ScanOffload:
    """The tape writer's batch hook: hands the batch's DeferredScans to the child, replacing each with
    its scanned event; whatever it cannot hand over stays a DeferredScan, scanned by the writer."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.worker: ScanWorker | None = None
        self.deaths = 0
        self.offloaded = 0
        self.disabled = False
        self._next_start = 0.0
        self._refusal_logged: ScanOrigin | None = None
        self._losses: list[object] = []

    def __call__(self, items: list[object]) -> list[object]:
        if any(isinstance(item, BuildFirst) for item in items):
            # (exchanges built in this thread: their DLP pass can go to the child with the others')
            items = [_built(item) if isinstance(item, BuildFirst) else item for item in items]
        deferred = [i for i, item in enumerate(items) if isinstance(item, ChildWork) and item.origin]
        out = list(items)
        # (A loss at start-up or in an earlier batch is written ahead of whatever this batch holds.)
        worker = None if not deferred or self.disabled else self._worker_for(out[deferred[0]].origin)  # type: ignore[union-attr, arg-type]
        if worker is not None:
            origin = worker.origin
            mine = [i for i in deferred if out[i].origin == origin]  # type: ignore[union-attr]
            try:
                for frame in _frames(mine):
                    scanned = worker.scan([items[i] for i in frame])  # type: ignore[misc]
                    for i, event in zip(frame, scanned, strict=True):
                        if event is not None:
                            out[i] = event
                            self.offloaded += 1
            except Exception as exc:  # the child died, hung or answered nonsense
                self._lost(worker, f"{type(exc).__name__}: {exc}")
        if self._losses:
            out[:0], self._losses = self._losses, []
        return out

    def start(self, origin: ScanOrigin) -> None:
        """Start the child before the first batch needs it (called once, before the tape writer's
        thread runs): started on demand, it took seconds to load while the first exchanges' DLP
        evidence scans ran in the writer's thread, on the proxy's critical core."""
        if self.worker is None and not self.disabled:
            self._worker_for(origin)

    def _worker_for(self, origin: ScanOrigin) -> ScanWorker | None:
        worker = self.worker
        if worker is not None and worker.origin != origin:
            worker.close()
            worker = self.worker = None
        if worker is None:
            if time.monotonic() < self._next_start:
                return None
            self._next_start = time.monotonic() + RESTART_INTERVAL
            try:
                worker = self.worker = ScanWorker(origin)
            except OSError as exc:
                self._lost(None, f"could not start: {type(exc).__name__}: {exc}")
                return None
        try:
            if not worker.poll_ready():
                if worker.refused is not None and self._refusal_logged != origin:
                    self._refusal_logged = origin
                    logger.warning(
                        "failcore: DLP evidence worker refused the policy (%s); scanning in-process",
                        worker.refused,
                    )
                return None
        except Exception as exc:
            self._lost(worker, f"{type(exc).__name__}: {exc}")
            return None
        return worker

    def _lost(self, worker: ScanWorker | None, why: str) -> None:
        """The child died or misbehaved: recorded on the tape (ahead of this batch, which the writer
        scans in-process)."""
        code = None
        if worker is not None:
            if worker.process.poll() is None:
                worker.process.kill()
            code = worker.close()
        self.worker = None
        self.deaths += 1
        self.disabled = self.deaths >= MAX_LOSSES
        logger.warning("failcore: DLP evidence worker lost (%s, exit %s); scanning in-process", why, code)
        event = EgressEvent(
            kind="internal_error",
            run=self.run_id,
            ts_start=time.time(),
            fail_reason="internal_error",
            error=f"DLP evidence worker lost: {why}"[:500],
            detail={
                "where": "evidence worker",
                "exit_code": code,
                "fail_open": True,
                "fallback": "DLP evidence scans run in the tape writer's thread "
                + ("for the rest of the run" if self.disabled else "until it restarts"),
            },
        ).to_dict()
        self._losses.append(event)

    def close(self) -> None:
        """(A loss not yet written, no batch having come since, is written with the run's last batch,
        its run_end: what is still pending here was never written, and is logged.)"""
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        if self._losses:
            logger.warning(
                "failcore: %d DLP evidence worker loss(es) not written to the tape", len(self._losses)
            )


def _serialised(body: bytes) -> dict[str, Any] | SerialisedEvent | None:
    """A SERIALISED reply's event: as the writer's item when the cheap check vouches for it, else parsed
    (the writer then checks it as any dict); None when it is not a JSON object."""
    event = SerialisedEvent.checked(body)
    if event is not None:
        return event
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _built(item: BuildFirst) -> object:
    try:
        return item.build()
    except Exception:  # left to the writer, which records why it could not be built
        return item


def _frames(indexes: list[int]) -> list[list[int]]:
    return [indexes[start : start + MAX_FRAME_EVENTS] for start in range(0, len(indexes), MAX_FRAME_EVENTS)]
