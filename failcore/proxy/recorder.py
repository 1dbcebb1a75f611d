"""Recorder: one EgressEvent per exchange (and per WebSocket message), written to the tape.

On the event loop we only take a snapshot of references (header tuples and body bytes are immutable);
decoding, hashing, redaction and JSON encoding happen in the tape writer's thread, so recording adds
no disk I/O and almost no CPU to the request path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from mitmproxy import ctx, exceptions, http
from mitmproxy.flow import Error

from failcore import __version__
from failcore.dlp.pending import engine_ready
from failcore.event import EgressEvent, FailReason, Target
from failcore.evidence import (
    body_evidence,
    credential_values,
    decoded_size_at_most,
    header_value,
    is_encoded,
    mask_echoed_credentials,
    redact_headers,
)
from failcore.llm import contract_drift
from failcore.paths import default_tape_dir, failcore_home, load_or_create_salt
from failcore.policy import Decision
from failcore.proxy.dlpguard import DlpScanner, scan_event
from failcore.proxy.guard import guarded
from failcore.proxy.meter import LlmFlow
from failcore.proxy.pastcap import PastCapScan, scan_held_body
from failcore.proxy.session import BodyTap, FlowState, Session
from failcore.tape.keys import load_or_create_signing_key
from failcore.tape.writer import TapeWriter

logger = logging.getLogger("failcore")

Headers = tuple[tuple[bytes, bytes], ...]


PROXY_STOPPED = "Proxy stopped before the exchange completed."
CLOSED_AFTER_END = "Client closed the connection after the stream's final event."


def classify_error(message: str) -> FailReason:
    """Map mitmproxy's error text onto failcore's fixed failure taxonomy."""
    m = message.lower()
    if message in (Error.KILLED_MESSAGE, PROXY_STOPPED) or "killed" in m:
        return "killed"
    if "client disconnected" in m or "client closed" in m or "connection closed by client" in m:
        return "client_disconnect"
    if "tls" in m or "ssl" in m or "certificate" in m or "handshake" in m:
        return "tls_error"
    if "timeout" in m or "timed out" in m:
        return "timeout"
    return "connect_error"


@dataclass(slots=True, frozen=True)
class EvidenceSettings:
    run_id: str
    body_cap: int
    salt: bytes
    redact: frozenset[str]
    dlp: DlpScanner | None = None


@dataclass(slots=True)
class MessageSnapshot:
    http_version: str
    headers: Headers
    content: bytes | None
    tap: BodyTap | None
    ts_start: float | None
    ts_end: float | None


@dataclass(slots=True)
class ExchangeSnapshot:
    flow_id: str
    action: str
    host: str
    port: int
    scheme: str
    method: str
    path: str
    ts_start: float
    ts_end: float
    request: MessageSnapshot
    response: MessageSnapshot | None
    status: int | None
    reason: str | None
    decision: Decision | None
    blocked: bool
    error: str | None
    internal_error: str | None
    llm: LlmFlow | None
    cut: dict[str, Any] | None = None
    warnings: list[dict[str, str]] | None = None
    replay: dict[str, Any] | None = None
    # The LLM stream's own final event (`[DONE]`, `message_stop`, `response.completed`, …) was seen,
    # and it was not an error event.
    stream_complete: bool = False

    def closed_after_end(self) -> bool:
        """The client hung up only after the LLM stream's final event: it has the whole answer.
        SDKs do this on purpose (the OpenAI SDK closes at `[DONE]`), so it is not a failure."""
        return (
            self.stream_complete
            and self.error is not None
            and self.cut is None
            and classify_error(self.error) == "client_disconnect"
        )


def _message_snapshot(msg: http.Message, tap: BodyTap | None) -> MessageSnapshot:
    return MessageSnapshot(
        http_version=msg.http_version,
        headers=msg.headers.fields,
        content=None if tap is not None else msg.raw_content,
        tap=tap,
        ts_start=msg.timestamp_start,
        ts_end=msg.timestamp_end,
    )


def snapshot_exchange(flow: http.HTTPFlow, state: FlowState | None, action: str) -> ExchangeSnapshot:
    req = flow.request
    resp = flow.response
    state = state or FlowState()
    now = time.time()
    return ExchangeSnapshot(
        flow_id=flow.id,
        action=action,
        host=state.decided_host or req.host,
        port=req.port,
        # A CONNECT opens a tunnel whose protocol is not known yet.
        scheme="tunnel" if action == "http.connect" else req.scheme,
        method=req.method,
        path=req.path,
        ts_start=req.timestamp_start,
        ts_end=(resp.timestamp_end if resp and resp.timestamp_end else None) or now,
        request=_message_snapshot(req, state.request_tap),
        response=_message_snapshot(resp, state.response_tap) if resp is not None else None,
        status=resp.status_code if resp is not None else None,
        reason=resp.reason if resp is not None else None,
        decision=state.decision,
        blocked=state.blocked,
        error=flow.error.msg if flow.error else None,
        internal_error=state.internal_error,
        llm=state.llm if state.llm is not None and state.llm.evidence is not None else None,
        cut=state.cut,
        warnings=state.warnings,
        replay=state.replay,
        stream_complete=bool(state.llm and state.llm.tracker and state.llm.tracker.completed),
    )


def _message_evidence(
    snap: MessageSnapshot, cfg: EvidenceSettings
) -> tuple[dict[str, Any], int, dict[str, Any] | None]:
    ev: dict[str, Any] = {
        "http_version": snap.http_version,
        "headers": redact_headers(snap.headers, cfg.redact, cfg.salt),
    }
    encoding = header_value(snap.headers, b"content-encoding")
    ctype = header_value(snap.headers, b"content-type")
    stream = None
    if snap.tap is not None:
        tap = snap.tap
        size = tap.size
        body = body_evidence(
            bytes(tap.kept),
            complete=tap.size <= len(tap.kept),
            wire_size=tap.size,
            content_encoding=encoding,
            content_type=ctype,
            cap=cfg.body_cap,
            wire_sha256=tap.digest.hexdigest(),
        )
        stream = tap.stream_evidence()
    else:
        content = snap.content or b""
        size = len(content)
        body = body_evidence(
            content,
            complete=True,
            wire_size=size,
            content_encoding=encoding,
            content_type=ctype,
            cap=cfg.body_cap,
        )
    ev["body"] = body
    return ev, size, stream


def _ms(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return round((b - a) * 1000, 3)


def build_exchange_event(snap: ExchangeSnapshot, cfg: EvidenceSettings) -> dict[str, Any]:
    """Runs in the tape writer's thread."""
    request, bytes_out, request_stream = _message_evidence(snap.request, cfg)
    response = None
    bytes_in = 0
    stream = None
    if snap.response is not None:
        response, bytes_in, stream = _message_evidence(snap.response, cfg)
        response["reason"] = snap.reason
    if request_stream is not None:
        request["stream"] = request_stream
    fail_reason: FailReason | None = None
    if snap.blocked or snap.cut is not None:
        # A stream failcore cut is stopped by failcore: mitmproxy's error text ("client disconnected")
        # describes the fallout, not the cause, which the `cut` block records.
        outcome = "BLOCKED"
    elif snap.internal_error and snap.status in (502, 503) and snap.response and not snap.response.tap:
        outcome, fail_reason = "FAIL", "internal_error"
    elif snap.closed_after_end():
        outcome = "ok"
    elif snap.error is not None:
        outcome, fail_reason = "FAIL", classify_error(snap.error)
    elif snap.status is not None and snap.status >= 400:
        outcome, fail_reason = "FAIL", "upstream_status"
    else:
        outcome = "ok"
    d = snap.decision
    path_only = snap.path.split("?", 1)[0]
    resp = snap.response
    event = EgressEvent(
        kind="network",
        run=cfg.run_id,
        ts_start=snap.ts_start,
        ts_end=snap.ts_end,
        flow=snap.flow_id,
        action=snap.action,
        target=Target(snap.host, snap.port, snap.scheme),
        method=snap.method,
        path=snap.path,
        summary=f"{snap.method} {path_only}"[:300]
        if snap.action != "http.connect"
        else f"CONNECT {snap.host}:{snap.port}",
        decision=d.decision if d else "ALLOW",
        rule=d.rule if d else None,
        reason=d.reason if d else "no policy loaded",
        would_block=d.would_block if d else False,
        outcome=outcome,  # type: ignore[arg-type]
        fail_reason=fail_reason,
        error=CLOSED_AFTER_END if snap.closed_after_end() else (snap.error or snap.internal_error),
        status=snap.status,
        latency_ms=_ms(snap.ts_start, snap.ts_end),
        ttfb_ms=_ms(snap.ts_start, resp.ts_start if resp else None),
        bytes_out=bytes_out,
        bytes_in=bytes_in,
        request=request,
        response=response,
        stream=stream,
        cut=snap.cut,
    )
    if snap.cut is not None:
        event.error = None
    if snap.warnings:
        event.warnings.extend(snap.warnings)
    if snap.llm is not None:
        event.llm = snap.llm.evidence
        event.warnings.extend(snap.llm.warnings)
        drift = _contract_drift(snap.llm, request)
        if event.llm is not None:
            event.llm["contract_drift"] = drift
        if drift:
            event.warnings.append({"reason": "contract_drift", "message": drift})
    out = event.to_dict()
    if snap.replay is not None:
        out["replay"] = snap.replay
    credentials = [*snap.request.headers, *(snap.response.headers if snap.response is not None else ())]
    mask_echoed_credentials(out, credential_values(credentials, cfg.redact), cfg.salt)
    if cfg.dlp is not None:
        scan_event(cfg.dlp, out, [*past_cap_scans(snap), *_held_past_cap_scans(snap, cfg, out)])
    return out


def _held_past_cap_scans(
    snap: ExchangeSnapshot, cfg: EvidenceSettings, event: dict[str, Any]
) -> list[PastCapScan]:
    """Past-cap scans of bodies that were buffered whole but are longer than what the tape keeps."""
    assert cfg.dlp is not None
    scans = []
    sides = (
        (snap.request, "request", cfg.dlp.settings.scan_request),
        (snap.response, "response", cfg.dlp.settings.scan_response),
    )
    for message, side, wanted in sides:
        if not wanted or message is None or message.tap is not None or not message.content:
            continue
        if not ((event.get(side) or {}).get("body") or {}).get("truncated"):
            continue  # the recorded part is the whole body, and evidence scanning covered it
        encoding = header_value(message.headers, b"content-encoding")
        scan = scan_held_body(cfg.dlp.engine, cfg.body_cap, f"{side}.body", message.content, encoding)
        if scan is not None:
            scans.append(scan)
    return scans


def past_cap_scans(snap: ExchangeSnapshot) -> list[PastCapScan]:
    """The DLP scans of this exchange's streamed bodies that went past the recorded cap."""
    return [
        observer
        for message in (snap.request, snap.response)
        if message is not None and message.tap is not None
        for observer in message.tap.observers
        if isinstance(observer, PastCapScan) and observer.passed_cap
    ]


def _contract_drift(meter: LlmFlow, request: dict[str, Any]) -> str | None:
    if meter.call is None or meter.call.response_format is None:
        return None
    body = request.get("body") or {}
    try:
        request_json = orjson.loads(body["text"]) if "text" in body and not body.get("truncated") else None
    except orjson.JSONDecodeError:
        request_json = None
    return contract_drift(meter.call, request_json if isinstance(request_json, dict) else None)


def build_websocket_event(
    cfg: EvidenceSettings,
    *,
    flow_id: str,
    target: Target,
    path: str,
    index: int,
    from_client: bool,
    is_text: bool,
    content: bytes,
    ts: float,
    decision: Decision | None,
    dropped: bool = False,
) -> dict[str, Any]:
    body = body_evidence(
        content,
        complete=True,
        wire_size=len(content),
        content_encoding=None,
        content_type="text/plain" if is_text else "application/octet-stream",
        cap=cfg.body_cap,
    )
    direction = "client->server" if from_client else "server->client"
    event = EgressEvent(
        kind="websocket",
        run=cfg.run_id,
        ts_start=ts,
        ts_end=ts,
        flow=flow_id,
        egress="NETWORK",
        action="ws.message",
        target=target,
        method=None,
        path=path,
        summary=f"WS {direction} #{index} ({'text' if is_text else 'binary'}, {len(content)} B)",
        decision="BLOCK" if dropped else d.decision if (d := decision) else "ALLOW",
        rule=decision.rule if decision else None,
        reason=decision.reason if decision else None,
        would_block=dropped or (decision.would_block if decision else False),
        outcome="BLOCKED" if dropped else "ok",
        bytes_out=len(content) if from_client else 0,
        bytes_in=0 if from_client else len(content),
        detail={
            "direction": direction,
            "index": index,
            "opcode": "text" if is_text else "binary",
            "body": body,
        },
    )
    out = event.to_dict()
    if cfg.dlp is not None:
        scan_event(cfg.dlp, out)
    return out


class EvidenceBacklog:
    """Builds evidence on the event loop, but only once the loop is idle for a moment: never inside a
    hook, so no response waits for it.

    Building in the tape writer's thread looks cheaper but is not: under load the two threads fight
    for the GIL, and every hand-over stalls the event loop (measured: 16% of plain-HTTP throughput
    for ~40 µs of work per event). Here the work runs in batches between network events, and the
    writer thread is left with what releases the GIL anyway (hashing, writing).
    """

    def __init__(
        self,
        submit: Callable[[dict[str, Any]], bool],
        limit: int,
        on_error: Callable[[Callable[[], dict[str, Any]], Exception], dict[str, Any]],
    ) -> None:
        self.submit = submit
        self.limit = limit
        self.on_error = on_error
        self.pending: list[Callable[[], dict[str, Any]]] = []
        self.dropped = 0
        self._scheduled = False

    def __call__(self, item: dict[str, Any] | Callable[[], dict[str, Any]]) -> bool:
        if not callable(item):
            return self.submit(item)
        if len(self.pending) >= self.limit:
            # Counted where the writer counts its own drops, so the tape gets a `dropped` marker.
            self.dropped += 1
            return self.submit(_unbuildable)
        self.pending.append(item)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.build)
        return True

    def build(self) -> None:
        self._scheduled = False
        pending, self.pending = self.pending, []
        for builder in pending:
            try:
                event = builder()
            except Exception as e:
                # Evidence is never lost silently: what is known of the exchange is recorded instead.
                event = self.on_error(builder, e)
            self.submit(event)


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
        encoding = header_value(message.headers, b"content-encoding")
        if is_encoded(encoding):
            total += decoded_size_at_most(bytes(content), encoding, LOOP_BUILD_MAX_BYTES + 1)
        else:
            total += len(content)
    return total


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


def _unbuildable() -> dict[str, Any]:
    raise RuntimeError("evidence backlog full: the event loop could not keep up with building evidence")


class Recorder:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.writer: TapeWriter | None = None
        self.backlog: EvidenceBacklog | None = None
        self.settings: EvidenceSettings | None = None
        self.counts = {"requests": 0, "blocked": 0, "failed": 0}
        self.started = time.time()
        # Exchanges seen but not yet recorded: a proxy stopping must still put each one on the tape.
        self.in_flight: dict[str, http.HTTPFlow] = {}
        self.exchanges_seen = 0
        # Requests (and WebSocket messages) refused because their evidence could not be written.
        self.refused = 0
        self._last_fault: str | None = None

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("failcore_tape", str, "", "Tape directory (default: ~/.failcore/tape).")
        loader.add_option("failcore_run_id", str, "", "Run id for this proxy's events (default: generated).")
        loader.add_option(
            "failcore_queue_size", int, 4096, "Events the tape writer may hold before dropping."
        )
        loader.add_option("failcore_segment_mb", int, 64, "Rotate tape segments after this many MiB.")
        loader.add_option(
            "failcore_segment_seconds", int, 0, "Also rotate tape segments after this many seconds (0: off)."
        )
        loader.add_option(
            "failcore_checkpoint_every", int, 1000, "Write a signed checkpoint every this many events."
        )
        loader.add_option(
            "failcore_tape_reserve_mb",
            int,
            16,
            "With fail_open: false, refuse requests while the tape's file system has less than this many "
            "MiB free: the rest is kept for the evidence of requests already forwarded (0: refuse only "
            "once a write has failed).",
        )

    def configure(self, updated: set[str]) -> None:
        for name in ("failcore_queue_size", "failcore_segment_mb", "failcore_checkpoint_every"):
            if name in updated and getattr(ctx.options, name) < 1:
                raise exceptions.OptionsError(f"{name} must be >= 1")
        if "failcore_segment_seconds" in updated and ctx.options.failcore_segment_seconds < 0:
            raise exceptions.OptionsError("failcore_segment_seconds must be >= 0")
        if "failcore_tape_reserve_mb" in updated and ctx.options.failcore_tape_reserve_mb < 0:
            raise exceptions.OptionsError("failcore_tape_reserve_mb must be >= 0")
        if "failcore_run_id" in updated and ctx.options.failcore_run_id:
            if self.writer is not None:
                raise exceptions.OptionsError("failcore_run_id cannot change while the proxy runs")
            self.session.run_id = ctx.options.failcore_run_id
        if "failcore_tape" in updated and self.writer is not None:
            raise exceptions.OptionsError("failcore_tape cannot change while the proxy runs")
        self._refresh_settings()

    def _refresh_settings(self) -> None:
        policy = self.session.policy
        if not self.session.salt:
            self.session.salt = load_or_create_salt(Path(os.path.expanduser(ctx.options.confdir)))
        self.settings = EvidenceSettings(
            run_id=self.session.run_id,
            body_cap=ctx.options.failcore_body_cap,
            salt=self.session.salt,
            redact=policy.redact_headers if policy else frozenset(),
            dlp=self.session.dlp,
        )

    def _current_settings(self) -> EvidenceSettings:
        s = self.settings
        policy = self.session.policy
        if (
            s is None
            or s.dlp is not self.session.dlp
            or (policy is not None and s.redact is not policy.redact_headers)
        ):
            self._refresh_settings()
        assert self.settings is not None
        return self.settings

    def running(self) -> None:
        if self.writer is not None:
            return
        tape_dir = Path(ctx.options.failcore_tape or default_tape_dir()).expanduser()
        # One signing identity per user, however failcore is started (mitmdump's confdir is mitmproxy's,
        # not failcore's): `failcore verify` checks tapes against the key in this same home.
        key = load_or_create_signing_key(failcore_home())
        seconds = ctx.options.failcore_segment_seconds
        self.writer = TapeWriter(
            tape_dir,
            signing_key=key,
            run_id=self.session.run_id,
            queue_size=ctx.options.failcore_queue_size,
            segment_bytes=ctx.options.failcore_segment_mb * 2**20,
            segment_seconds=float(seconds) if seconds else None,
            checkpoint_every=ctx.options.failcore_checkpoint_every,
            reserve_bytes=ctx.options.failcore_tape_reserve_mb * 2**20,
            on_error=lambda msg: logger.warning("failcore tape: %s", msg),
        )
        self.writer.start()
        self.started = time.time()
        policy = self.session.policy
        self.writer.submit(
            EgressEvent(
                kind="run_start",
                run=self.session.run_id,
                ts_start=self.started,
                detail={
                    "version": __version__,
                    "pid": os.getpid(),
                    "argv": sys.argv[:32],
                    "policy": policy.source if policy else None,
                    "policy_sha256": policy.sha256 if policy else None,
                    "mode": policy.mode if policy else None,
                    "tape": str(tape_dir),
                    **({"replay_of": self.session.replay_of} if self.session.replay_of else {}),
                },
            ).to_dict()
        )
        self.backlog = EvidenceBacklog(
            self.writer.submit, ctx.options.failcore_queue_size, self._evidence_failed
        )
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
                detail={
                    **self.counts,
                    "internal_errors": self.session.internal_errors,
                    "dropped": self.writer.dropped,
                    "refused_no_evidence": self.refused,
                    "duration_s": round(now - self.started, 3),
                },
            ).to_dict()
        )
        self.writer.close()
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
        """An internal_error event naming the exchange whose evidence could not be built."""
        self.session.internal_errors += 1
        logger.warning("failcore: could not build evidence: %s: %s", type(exc).__name__, exc)
        snap = getattr(builder, "args", (None,))[0]
        detail: dict[str, Any] = {"where": "evidence builder", "fail_open": True}
        flow_id = None
        if isinstance(snap, ExchangeSnapshot):
            flow_id = snap.flow_id
            detail.update(
                summary=f"{snap.method} {snap.path.split('?', 1)[0]}"[:300],
                target={"host": snap.host, "port": snap.port, "scheme": snap.scheme},
                status=snap.status,
            )
        return EgressEvent(
            kind="internal_error",
            run=self.session.run_id,
            ts_start=time.time(),
            flow=flow_id,
            fail_reason="internal_error",
            error=f"{type(exc).__name__}: {exc}"[:500],
            detail=detail,
        ).to_dict()

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
        builder = partial(build_exchange_event, snap, settings)
        compiling = settings.dlp is not None and not engine_ready(settings.dlp.engine)
        if self.writer is not None and (
            _body_bytes(snap) > LOOP_BUILD_MAX_BYTES or past_cap_scans(snap) or compiling
        ):
            # Decoding, scanning and hashing a large body would hold the event loop for milliseconds
            # (and a past-cap scan, or DLP rules still compiling at start-up, may have to be waited for):
            # that work goes to the writer's thread, where a GIL hand-over is the smaller cost.
            self.writer.submit(self._safe(builder))
            return
        self.session.record(builder)

    def _safe(self, builder: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        def build() -> dict[str, Any]:
            try:
                return builder()
            except Exception as e:
                return self._evidence_failed(builder, e)

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
        flow.response = evidence_unavailable_response(fault, flow.id)

    @guarded("recorder.requestheaders")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.in_flight[flow.id] = flow
        self.exchanges_seen += 1
        if self.exchanges_seen % IN_FLIGHT_SWEEP == 0:
            self._sweep_in_flight()
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
        assert flow.websocket is not None and self.settings is not None
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
                self.settings,
                flow_id=flow.id,
                target=Target(
                    state.decided_host or req.host, req.port, "wss" if req.scheme == "https" else "ws"
                ),
                path=req.path,
                index=state.ws_messages,
                from_client=msg.from_client,
                is_text=msg.is_text,
                content=msg.content,
                ts=msg.timestamp,
                decision=state.decision,
                dropped=msg.dropped,
            )
        )

    @guarded("recorder.websocket_end")
    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.session.finish(flow)
