"""Recorder: one EgressEvent per exchange (and per WebSocket message), written to the tape.

The hooks only take a snapshot of references (header tuples and body bytes are immutable); the event
is built from it by failcore.evidence (decoding, hashing, redaction, DLP masking) once the event loop
is idle or in the tape writer's thread, so recording adds no disk I/O and almost no CPU to the request
path. This module owns the tape writer's life, the run's start and end events, and fail-closed refusals.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from mitmproxy import exceptions, http
from mitmproxy.flow import Error

from failcore.dlp.pending import engine_ready
from failcore.dlp.rules import policy_rules
from failcore.event import EgressEvent, Target
from failcore.evidence import decoded_size_at_most, is_encoded, pastcapworker
from failcore.evidence.backlog import EvidenceBacklog
from failcore.evidence.dlp import scan_internal_error
from failcore.evidence.exchange import (
    PROXY_STOPPED,
    EvidenceSettings,
    ExchangeSnapshot,
    build_exchange_event,
    build_websocket_event,
    message_framing,
    past_cap_scans,
    unbuilt_exchange_event,
)
from failcore.evidence.remotebuild import RemoteBuild, remote_eligible, snapshot_of_frame
from failcore.evidence.scanworker import BuildFirst, DeferredScan, ScanOffload, ScanOrigin, rules_sha256
from failcore.paths import default_tape_dir, failcore_home, load_or_create_salt
from failcore.proxy.guard import guarded
from failcore.proxy.session import Session, answer
from failcore.proxy.snapshot import snapshot_exchange
from failcore.runmarks import run_end_detail, run_start_detail
from failcore.tape.keys import load_or_create_signing_key
from failcore.tape.writer import COALESCE_SECONDS, STRICT_COALESCE_SECONDS, TapeWriter
from failcore.wiretext import wire_text

logger = logging.getLogger("failcore")


# Every this many open exchanges, look for ones mitmproxy finished without a hook (see _sweep_in_flight).
IN_FLIGHT_SWEEP = 1024

# Exchanges with more body than this are built in the writer's thread rather than on the event loop.
LOOP_BUILD_MAX_BYTES = 64 * 1024


def _body_bytes(snap: ExchangeSnapshot) -> int:
    """Bytes of body the evidence builder will work through; a compressed body counts as what it
    decodes to, found by a probe that stops past LOOP_BUILD_MAX_BYTES, so a small compressed body that
    inflates to megabytes (a 1.7 KB brotli bomb) is neither decoded on the event loop nor to weigh it."""
    total = 0
    for message in (snap.request, snap.response):
        if message is None:
            continue
        content = message.tap.kept if message.tap is not None else message.content
        if not content:
            continue
        encoding = message_framing(message)[0]
        if is_encoded(encoding):
            total += decoded_size_at_most(bytes(content), encoding, LOOP_BUILD_MAX_BYTES + 1)
        else:
            total += len(content)
    return total


def _build_from_frame(frame: bytes, settings: EvidenceSettings) -> dict[str, Any] | DeferredScan:
    """In this process, the event of an exchange whose snapshot was let go (RemoteBuild.let_go), as the
    DLP evidence worker builds it from the same frame (its DLP pass may be deferred)."""
    return build_exchange_event(snapshot_of_frame(frame), settings)


EVIDENCE_UNAVAILABLE = "evidence-unavailable"


def evidence_unavailable_response(fault: str, event_id: str) -> http.Response:
    """The answer to a request refused because its evidence cannot be written (fail_open: false)."""
    body = orjson.dumps(
        {
            "error": {
                "type": "failcore_evidence_unavailable",
                "message": "failcore cannot write evidence of this request to its tape and the policy says "
                "fail_open: false, so the request was not forwarded",
                "detail": fault,
                "event": event_id,
            }
        }
    )
    headers = {
        "Content-Type": "application/json",
        "X-FailCore-Decision": "FAIL_CLOSED",
        "X-FailCore-Reason": EVIDENCE_UNAVAILABLE,
        "X-FailCore-Event": event_id,
        "Retry-After": "5",
    }
    return http.Response.make(503, body, headers)


def batch_window(fail_open: bool) -> float:
    """How long the tape writer gathers a batch under load: longer saves the proxy CPU, but a crash
    loses what is gathered; where evidence must hold (`fail_open: false`) the short window stays."""
    return COALESCE_SECONDS if fail_open else STRICT_COALESCE_SECONDS


class Recorder:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.writer: TapeWriter | None = None
        self.backlog: EvidenceBacklog | None = None
        self.evidence_cfg: EvidenceSettings | None = None
        self.counts = {"requests": 0, "blocked": 0, "failed": 0}
        self.started = time.time()
        # Exchanges seen but not yet recorded: a proxy stopping must still put each one on the tape.
        self.in_flight: dict[str, http.HTTPFlow] = {}
        self.exchanges_seen = 0
        # Requests (and WebSocket messages) refused because their evidence could not be written.
        self.refused = 0
        self._last_fault: str | None = None
        # DLP evidence scans of exchanges built on the loop run in a child process (see
        # failcore.evidence.scanworker); FAILCORE_EVIDENCE_WORKER=0 keeps them in this process.
        self.offload: ScanOffload | None = None

    def configure(self, updated: set[str]) -> None:
        # The values were checked by failcore.proxy.settings.Settings, which FailCore configures first.
        settings = self.session.settings
        if "failcore_run_id" in updated and settings.run_id:
            if self.writer is not None:
                raise exceptions.OptionsError("failcore_run_id cannot change while the proxy runs")
            self.session.run_id = settings.run_id
        if "failcore_tape" in updated and self.writer is not None:
            raise exceptions.OptionsError("failcore_tape cannot change while the proxy runs")
        self._refresh_settings()

    def _refresh_settings(self) -> None:
        policy = self.session.policy
        if not self.session.salt:
            self.session.salt = load_or_create_salt(Path(os.path.expanduser(self.session.settings.confdir)))
        self.evidence_cfg = EvidenceSettings(
            run_id=self.session.run_id,
            body_cap=self.session.settings.body_cap,
            salt=self.session.salt,
            redact=policy.redact_headers if policy else frozenset(),
            dlp=self.session.dlp,
            scan_origin=self._scan_origin(),
        )

    def _scan_origin(self) -> ScanOrigin | None:
        """Where the scan worker can rebuild this run's DLP scanner: the policy file it came from."""
        policy = self.session.policy
        if (
            self.offload is None
            or self.session.dlp is None
            or policy is None
            or not os.path.isfile(policy.source)
        ):
            return None
        rules = rules_sha256(policy_rules(policy))
        return ScanOrigin(
            os.path.abspath(policy.source), policy.sha256, policy.mode, self.session.salt, rules
        )

    def _current_settings(self) -> EvidenceSettings:
        s = self.evidence_cfg
        policy = self.session.policy
        if (
            s is None
            or s.dlp is not self.session.dlp
            or (policy is not None and s.redact is not policy.redact_headers)
        ):
            self._refresh_settings()
        assert self.evidence_cfg is not None
        window = batch_window(self.session.fail_open)
        if self.writer is not None and self.writer.coalesce_seconds != window:
            self.writer.coalesce_seconds = window  # the policy's fail_open changed (a reload)
        return self.evidence_cfg

    def running(self) -> None:
        if self.writer is not None:
            return
        settings = self.session.settings
        if os.environ.get("FAILCORE_EVIDENCE_WORKER", "1") != "0":
            self.offload = ScanOffload(self.session.run_id)
            self._refresh_settings()
            assert self.evidence_cfg is not None
            if self.evidence_cfg.scan_origin is not None:
                # Loading while the proxy starts, so it scans from the first exchange on.
                self.offload.start(self.evidence_cfg.scan_origin)
        tape_dir = Path(settings.tape or default_tape_dir()).expanduser()
        # One signing identity per user, however failcore is started (mitmdump's confdir is mitmproxy's,
        # not failcore's): `failcore verify` checks tapes against the key in this same home.
        key = load_or_create_signing_key(failcore_home())
        seconds = settings.segment_seconds
        self.writer = TapeWriter(
            tape_dir,
            signing_key=key,
            run_id=self.session.run_id,
            queue_size=settings.queue_size,
            segment_bytes=settings.segment_mb * 2**20,
            segment_seconds=float(seconds) if seconds else None,
            checkpoint_every=settings.checkpoint_every,
            reserve_bytes=settings.tape_reserve_mb * 2**20,
            on_error=lambda msg: logger.warning("failcore tape: %s", msg),
            prepare=self.offload,
            coalesce_seconds=batch_window(self.session.fail_open),
        )
        self.writer.start()
        self.started = time.time()
        policy, dlp = self.session.policy, self.session.dlp
        # (engine.scan looked up when called: a PendingEngine's attributes wait for the compile.)
        scan = (lambda text: dlp.engine.scan(text)) if dlp is not None else None
        # Built on the writer thread: a secret on the command line is masked by the run's DLP rules.
        self.writer.submit(
            lambda: EgressEvent(
                kind="run_start",
                run=self.session.run_id,
                ts_start=self.started,
                detail=run_start_detail(policy, tape_dir, self.session.replay_of, scan),
            ).to_dict()
        )
        self.backlog = EvidenceBacklog(self.writer.submit, settings.queue_size, self._evidence_failed_on_loop)
        self.session.attach(self.backlog)
        logger.info("failcore: recording run %s to %s", self.session.run_id, tape_dir)

    def done(self) -> None:
        if self.writer is None:
            return
        self._record_interrupted()
        # The run summary must not be the event a full queue drops: let the writer catch up first.
        if self.backlog is not None:
            self.backlog.build()
        self.writer.flush(timeout=10)
        now = time.time()
        self.session.record(
            EgressEvent(
                kind="run_end",
                run=self.session.run_id,
                ts_start=self.started,
                ts_end=now,
                detail=run_end_detail(
                    self.counts,
                    self.session.internal_errors + (self.offload.deaths if self.offload else 0),
                    self.writer.dropped,
                    self.refused,
                    now - self.started,
                ),
            ).to_dict()
        )
        self.writer.close()
        if self.offload is not None:
            self.offload.close()
        # Every exchange's evidence is written: the past-cap scan process has nothing left to answer (it
        # would otherwise outlive an embedded proxy; another proxy in this process starts a new one).
        pastcapworker.close()
        self.session.sink = None
        self.writer = None

    def _record_interrupted(self) -> None:
        """Exchanges still open when the proxy stops end on the tape as `killed`, with what was seen."""
        for flow in list(self.in_flight.values()):
            if flow.error is None:
                flow.error = Error(PROXY_STOPPED)
            try:
                self._record_exchange(flow, "http.request")
            except Exception as exc:  # one broken flow must not cost the others (or run_end) their record
                self.session.internal_error(flow, "recorder.done", exc)
        self.in_flight.clear()

    def _evidence_failed(self, builder: Callable[[], dict[str, Any]], exc: Exception) -> dict[str, Any]:
        """An internal_error event naming the exchange whose evidence could not be built (on the tape
        writer's thread: masked here, failcore.evidence.dlp.scan_internal_error)."""
        return self._unbuilt(builder, exc)()

    def _evidence_failed_on_loop(
        self, builder: Callable[[], dict[str, Any]], exc: Exception
    ) -> Callable[[], dict[str, Any]]:
        """As _evidence_failed, for the evidence backlog: masked on the tape writer's thread."""
        return self._unbuilt(builder, exc)

    def _unbuilt(self, builder: Callable[[], dict[str, Any]], exc: Exception) -> Callable[[], dict[str, Any]]:
        self.session.internal_errors += 1
        logger.warning("failcore: could not build evidence: %s: %s", type(exc).__name__, exc)
        snap = getattr(builder, "args", (None,))[0]
        if isinstance(snap, bytes):  # (a RemoteBuild's frame: _build_from_frame)
            try:
                snap = snapshot_of_frame(snap)
            except Exception:
                snap = None
        event = unbuilt_exchange_event(
            self.session.run_id, snap if isinstance(snap, ExchangeSnapshot) else None, exc
        )
        return partial(scan_internal_error, self.session.dlp, event)

    def pending_exchanges(self) -> int:
        """Exchanges mitmproxy is still working on that the tape does not have yet."""
        return sum(1 for flow in self.in_flight.values() if flow.live)

    def _record_exchange(self, flow: http.HTTPFlow, action: str) -> None:
        if flow.metadata.get("failcore_recorded"):
            return
        flow.metadata["failcore_recorded"] = True
        self.in_flight.pop(flow.id, None)
        settings = self._current_settings()
        # A WebSocket upgrade's state lives on for its messages; websocket_end releases it.
        state = self.session.flows.get(flow.id) if flow.websocket is not None else self.session.finish(flow)
        snap = snapshot_exchange(flow, state, action)
        self.counts["requests"] += 1
        if snap.blocked:
            self.counts["blocked"] += 1
        elif (snap.error and not snap.closed_after_end()) or (snap.status or 0) >= 400:
            self.counts["failed"] += 1
        # Only the snapshot is taken in the hook: where the event is built is decided with the build,
        # once the response has been handed to the client (the evidence backlog runs after the hook).
        self.session.record(partial(self._build_or_hand_over, snap, settings))

    def _build_or_hand_over(
        self, snap: ExchangeSnapshot, settings: EvidenceSettings
    ) -> dict[str, Any] | DeferredScan | BuildFirst | RemoteBuild:
        """The exchange's event, built here (on the event loop, when it is idle), or for a large body
        the builder handed to the writer's thread. (`snap` first: _evidence_failed names it.)"""
        if self.writer is None:
            return build_exchange_event(snap, settings)
        if not past_cap_scans(snap):
            body_bytes = _body_bytes(snap)
            # (past LOOP_BUILD_MAX_BYTES the probe stopped: the size is not known)
            if body_bytes <= LOOP_BUILD_MAX_BYTES and remote_eligible(snap, settings, body_bytes):
                # Built by the DLP evidence worker with its DLP pass (or by the writer's thread when it
                # cannot), never here: failcore.evidence.remotebuild.
                remote = RemoteBuild(snap, settings)
                if remote.serialise_now():  # (the snapshot is let go: the frame holds it all)
                    remote.let_go(BuildFirst(self._safe(partial(_build_from_frame, remote.frame, settings))))
                    return remote
                # A snapshot orjson refuses is built in the writer's thread (below): handed over, its
                # frame would fail again there, and with it the frame of its whole batch.
            elif body_bytes <= LOOP_BUILD_MAX_BYTES and (
                settings.dlp is None or engine_ready(settings.dlp.engine)
            ):
                return build_exchange_event(snap, settings)
        # Decoding, scanning and hashing a large body would hold the event loop for milliseconds
        # (and a past-cap scan, or DLP rules still compiling at start-up, may have to be waited for):
        # that work goes to the writer's thread, where a GIL hand-over is the smaller cost.
        # Built there before the batch goes to the DLP evidence worker, which then runs its DLP pass
        # (the recorded part's scan, the past-cap hits placed) off this process's GIL.
        return BuildFirst(self._safe(partial(build_exchange_event, snap, settings)))

    def _safe(
        self, builder: Callable[[], dict[str, Any] | DeferredScan]
    ) -> Callable[[], dict[str, Any] | DeferredScan]:
        def build() -> dict[str, Any] | DeferredScan:
            try:
                built = builder()
            except Exception as e:
                return self._evidence_failed(builder, e)
            if isinstance(built, DeferredScan):  # its DLP pass, if it runs here, fails the same way
                built.on_error = partial(self._evidence_failed, builder)
            return built

        return build

    def evidence_fault(self) -> str | None:
        """Why evidence cannot be written right now, when the policy says that must stop traffic
        (fail_open: false); None otherwise. Synchronous: asked before a request leaves."""
        if self.session.fail_open:
            return None
        fault = "the tape is not open" if self.writer is None else self.writer.fault()
        if fault != self._last_fault:
            if fault is not None:
                logger.warning("failcore: refusing traffic (fail_open: false): %s", fault)
            else:
                logger.warning("failcore: evidence can be written again; traffic resumes")
            self._last_fault = fault
        return fault

    def _refuse_without_evidence(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or (fault := self.evidence_fault()) is None:
            return
        state = self.session.state(flow)
        state.internal_error = f"evidence cannot be written: {fault}"
        if flow.request.stream:
            # Set by the stream tap just before: the body would start leaving once the hook returns.
            flow.request.stream = False
            state.request_tap = None
        self.refused += 1
        answer(flow, evidence_unavailable_response(fault, flow.id))

    def track(self, flow: http.HTTPFlow) -> None:
        """Count `flow` as in flight (once): from here on, a proxy stopping records it."""
        if flow.id in self.in_flight or flow.metadata.get("failcore_recorded"):
            return
        self.in_flight[flow.id] = flow
        self.exchanges_seen += 1
        if self.exchanges_seen % IN_FLIGHT_SWEEP == 0:
            self._sweep_in_flight()

    @guarded("recorder.requestheaders")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.track(flow)
        self._refuse_without_evidence(flow)

    @guarded("recorder.request")
    def request(self, flow: http.HTTPFlow) -> None:
        # A buffered body took time to arrive: ask again just before the request leaves. (A streamed
        # one has left by now; it was decided on at requestheaders.)
        if not flow.request.stream:
            self._refuse_without_evidence(flow)

    @guarded("recorder.http_connect")
    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._refuse_without_evidence(flow)

    def _sweep_in_flight(self) -> None:
        """mitmproxy ends every exchange with a response or error hook; should one ever end without,
        it is recorded here (as what it is, with what was seen) instead of being held forever."""
        for flow in [f for f in self.in_flight.values() if not f.live]:
            if flow.error is None and flow.response is None:
                flow.error = Error("Exchange ended without a response or error from mitmproxy.")
            self._record_exchange(flow, "http.request")

    @guarded("recorder.response")
    def response(self, flow: http.HTTPFlow) -> None:
        self._record_exchange(flow, "http.request")

    @guarded("recorder.error")
    def error(self, flow: http.HTTPFlow) -> None:
        self._record_exchange(flow, "http.request")

    @guarded("recorder.http_connect_error")
    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        self._record_exchange(flow, "http.connect")

    @guarded("recorder.websocket_message")
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        assert flow.websocket is not None and self.evidence_cfg is not None
        msg = flow.websocket.messages[-1]
        if (fault := self.evidence_fault()) is not None:
            msg.drop()
            self.refused += 1
            self.session.state(flow).internal_error = f"evidence cannot be written: {fault}"
        state = self.session.state(flow)
        state.ws_messages += 1
        req = flow.request
        self.session.record(
            partial(
                build_websocket_event,
                self.evidence_cfg,
                flow_id=flow.id,
                target=Target(
                    wire_text(state.decided_host or req.host),
                    req.port,
                    "wss" if req.scheme == "https" else "ws",
                ),
                path=wire_text(req.path),
                index=state.ws_messages,
                from_client=msg.from_client,
                is_text=msg.is_text,
                content=msg.content,
                ts=msg.timestamp,
                decision=state.decision,
                dropped=msg.dropped,
                credentials=(*req.headers.fields, *(flow.response.headers.fields if flow.response else ())),
            )
        )

    @guarded("recorder.websocket_end")
    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.session.finish(flow)


class InFlight:
    """The first concern to see each exchange: counts it in flight with the recorder before any other
    concern can make its hook wait (the DLP rules still compiling just after start-up). A proxy stopped
    meanwhile (a client that got mitmproxy's 400 for a malformed request stops it at once) still records
    the exchange; counted only at the recorder's own hook, it was lost with the waiting hook."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.session = recorder.session

    @guarded("recorder.in_flight")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.recorder.track(flow)
