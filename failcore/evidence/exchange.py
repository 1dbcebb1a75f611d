"""Exchange events: what the tape records of one HTTP exchange or WebSocket message.

The recorder (failcore.proxy.recorder) takes an `ExchangeSnapshot` on the event loop: references only
(header tuples and body bytes are immutable). Everything else happens here, away from the hooks:
decoding, hashing, redaction, DLP masking and the event itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from failcore.event import EgressEvent, FailReason, Target
from failcore.evidence.body import body_evidence, framing_headers
from failcore.evidence.dlp import scan_event
from failcore.evidence.findings import PastCapFindings
from failcore.evidence.pastcap import PastCapScan, scan_held_body
from failcore.evidence.redact import credential_values, mask_echoed_credentials, redact_headers
from failcore.evidence.scanworker import DeferredScan, ScanOrigin
from failcore.evidence.straddle import mask_straddling
from failcore.llm import contract_drift

if TYPE_CHECKING:
    from failcore.dlp.scanner import DlpScanner
    from failcore.policy.model import Decision
    from failcore.proxy.meter import LlmFlow
    from failcore.proxy.session import BodyTap

Headers = tuple[tuple[bytes, bytes], ...]

PROXY_STOPPED = "Proxy stopped before the exchange completed."
CLOSED_AFTER_END = "Client closed the connection after the stream's final event."


def classify_error(message: str) -> FailReason:
    """Map mitmproxy's error text onto failcore's fixed failure taxonomy."""
    m = message.lower()
    # (mitmproxy's Error.KILLED_MESSAGE is "Connection killed.": not imported, so building an event in
    # the DLP evidence worker loads no mitmproxy; tests/test_remotebuild.py checks the text)
    if message == PROXY_STOPPED or "killed" in m:
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
    """What building an event needs besides its snapshot (the recorder refreshes it with the policy)."""

    run_id: str
    body_cap: int
    salt: bytes
    redact: frozenset[str]
    dlp: DlpScanner | None = None
    # Where a separate process can rebuild `dlp` (failcore.evidence.scanworker); None: scan in-process.
    scan_origin: ScanOrigin | None = None


@dataclass(slots=True)
class MessageSnapshot:
    http_version: str
    headers: Headers
    content: bytes | None
    tap: BodyTap | None
    ts_start: float | None
    ts_end: float | None
    # Trailer fields (HTTP/2 or chunked HTTP/1.1), if the message had any.
    trailers: Headers | None = None
    # (Content-Encoding, Content-Type), read once from `headers` (message_framing).
    framing: tuple[str | None, str | None] | None = None


def message_framing(snap: MessageSnapshot) -> tuple[str | None, str | None]:
    """The message's Content-Encoding and Content-Type, read from its headers once."""
    if snap.framing is None:
        snap.framing = framing_headers(snap.headers)
    return snap.framing


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


def _message_evidence(
    snap: MessageSnapshot, cfg: EvidenceSettings, credentials: list[tuple[bytes, bytes]]
) -> tuple[dict[str, Any], int, dict[str, Any] | None]:
    """The message's evidence, its body's wire size and its stream block; the header (and trailer)
    fields that carry credentials are appended to `credentials`, in wire order."""
    ev: dict[str, Any] = {
        "http_version": snap.http_version,
        "headers": redact_headers(snap.headers, cfg.redact, cfg.salt, credentials),
    }
    if snap.trailers:
        ev["trailers"] = redact_headers(snap.trailers, cfg.redact, cfg.salt, credentials)
    encoding, ctype = message_framing(snap)
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


def build_exchange_event(snap: ExchangeSnapshot, cfg: EvidenceSettings) -> dict[str, Any] | DeferredScan:
    """The exchange's event. When `cfg.scan_origin` is set it comes back as a DeferredScan: built, its
    past-cap scans finished (waited for: call it off the loop when it has some), its DLP pass left to
    the scan worker (or to whoever calls it)."""
    # The fields carrying credentials, request's then response's (headers, then trailers).
    credentials: list[tuple[bytes, bytes]] = []
    request, bytes_out, request_stream = _message_evidence(snap.request, cfg, credentials)
    response = None
    bytes_in = 0
    stream = None
    if snap.response is not None:
        response, bytes_in, stream = _message_evidence(snap.response, cfg, credentials)
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
    secrets = credential_values(credentials, cfg.redact)
    findings: tuple[PastCapFindings, ...] = ()
    if cfg.dlp is not None:
        past_cap = [*past_cap_scans(snap), *_held_past_cap_scans(snap, cfg, out)]
        # The past-cap scans' results (waited for here, off the loop), as plain data. A secret that
        # straddles the cap is masked by its offset first: the echoed credentials' masks below (and
        # the recorded part's own DLP masks) change the recorded text's length.
        findings = mask_straddling(out, tuple(scan.findings() for scan in past_cap), secrets)
    if cfg.dlp is None:
        mask_echoed_credentials(out, secrets, cfg.salt)
        return out
    # The echoes are masked by the DLP pass, once it has scanned the event as sent: a mask spliced
    # into a secret first would break its match (failcore.evidence.echoes).
    echoes = (secrets, cfg.salt) if secrets else None
    if cfg.scan_origin is not None:
        return DeferredScan(out, cfg.dlp, cfg.scan_origin, findings, echoes)
    scan_event(cfg.dlp, out, findings, echoes)
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
        encoding = message_framing(message)[0]
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
    credentials: Headers = (),
) -> dict[str, Any] | DeferredScan:
    """`credentials`: the upgrade's request and response header fields, whose credentials are masked
    where the message echoes them (as an exchange's are in its bodies)."""
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
    secrets = credential_values(credentials, cfg.redact)
    if cfg.dlp is None:
        mask_echoed_credentials(out, secrets, cfg.salt)
        return out
    echoes = (secrets, cfg.salt) if secrets else None
    if cfg.scan_origin is not None:
        return DeferredScan(out, cfg.dlp, cfg.scan_origin, (), echoes)
    scan_event(cfg.dlp, out, (), echoes)
    return out


def unbuilt_exchange_event(run_id: str, snap: ExchangeSnapshot | None, exc: Exception) -> dict[str, Any]:
    """The internal_error event recorded instead of an exchange whose evidence could not be built:
    what is known of the exchange without building anything."""
    detail: dict[str, Any] = {"where": "evidence builder", "fail_open": True}
    flow_id = None
    if snap is not None:
        flow_id = snap.flow_id
        detail.update(
            summary=f"{snap.method} {snap.path.split('?', 1)[0]}"[:300],
            target={"host": snap.host, "port": snap.port, "scheme": snap.scheme},
            status=snap.status,
        )
    return EgressEvent(
        kind="internal_error",
        run=run_id,
        ts_start=time.time(),
        flow=flow_id,
        fail_reason="internal_error",
        error=f"{type(exc).__name__}: {exc}"[:500],
        detail=detail,
    ).to_dict()
