"""An exchange's whole event built in the DLP evidence worker, not in the proxy.

Measured in a real mitmdump under the plain-HTTP throughput load (BENCHMARKS.md, the tenth session):
building one keep-alive 1 KB JSON exchange's event costs the proxy ~47 µs of CPU with its GIL held
(redacting headers, hashing and decoding bodies, the event dict), on top of the DLP pass the worker
already runs. The proxy is GIL-bound under load: moving that work to the tape writer's thread was
measured to save nothing, so it goes to the worker process with the DLP pass.

The exchange's snapshot travels as plain JSON (`snapshot_to_wire`: header fields and bodies as latin-1
text, so every byte comes back as it was; timestamps as orjson writes floats, exactly), and the child
runs the very `build_exchange_event` the proxy would, with its DLP pass in place. Only a plain exchange
goes: bodies held whole (no stream tap, no past-cap scan), no larger than the recorded cap (so no body
needs a past-cap scan of its own) and no LLM call (its meter's state stays in the proxy). Anything else,
and every exchange while the child is starting, refused or lost, is built by the proxy as before:
`RemoteBuild` is also a builder the tape writer calls itself (in its thread, never on the event loop).
"""

from __future__ import annotations

from typing import Any

from failcore.evidence.exchange import (
    EvidenceSettings,
    ExchangeSnapshot,
    MessageSnapshot,
    build_exchange_event,
)
from failcore.evidence.scanworker import BuildFirst, ChildWork, ScanOrigin
from failcore.policy.model import Decision

# The first element of a build item on the pipe (a scan item is an event dict, or a list opening with one).
BUILD = "build"


def remote_eligible(snap: ExchangeSnapshot, cfg: EvidenceSettings, body_bytes: int) -> bool:
    """Whether the worker can build this exchange's event exactly as the proxy would. `body_bytes`:
    what its bodies decode to, exactly (the recorder asks only when its probe did not stop early)."""
    return (
        cfg.scan_origin is not None
        and cfg.dlp is not None
        and snap.llm is None
        and snap.request.tap is None
        and (snap.response is None or snap.response.tap is None)
        and body_bytes <= cfg.body_cap
    )


def _fields(fields: Any) -> list[list[str]] | None:
    if fields is None:
        return None
    return [[name.decode("latin-1"), value.decode("latin-1")] for name, value in fields]


def _fields_back(wire: list[list[str]] | None) -> tuple[tuple[bytes, bytes], ...] | None:
    if wire is None:
        return None
    return tuple((name.encode("latin-1"), value.encode("latin-1")) for name, value in wire)


def _message(m: MessageSnapshot) -> list[Any]:
    content = None if m.content is None else bytes(m.content).decode("latin-1")
    return [m.http_version, _fields(m.headers), content, m.ts_start, m.ts_end, _fields(m.trailers)]


def _message_back(wire: list[Any]) -> MessageSnapshot:
    http_version, headers, content, ts_start, ts_end, trailers = wire
    return MessageSnapshot(
        http_version=http_version,
        headers=_fields_back(headers),  # type: ignore[arg-type]
        content=None if content is None else content.encode("latin-1"),
        tap=None,
        ts_start=ts_start,
        ts_end=ts_end,
        trailers=_fields_back(trailers),
    )


def snapshot_to_wire(snap: ExchangeSnapshot) -> list[Any]:
    """A plain exchange's snapshot (remote_eligible) as JSON-ready data."""
    d = snap.decision
    return [
        snap.flow_id,
        snap.action,
        snap.host,
        snap.port,
        snap.scheme,
        snap.method,
        snap.path,
        snap.ts_start,
        snap.ts_end,
        _message(snap.request),
        None if snap.response is None else _message(snap.response),
        snap.status,
        snap.reason,
        None if d is None else [d.decision, d.rule, d.reason, d.would_block, d.matched_action],
        snap.blocked,
        snap.error,
        snap.internal_error,
        snap.cut,
        snap.warnings,
        snap.replay,
        snap.stream_complete,
    ]


def snapshot_from_wire(wire: list[Any]) -> ExchangeSnapshot:
    (flow_id, action, host, port, scheme, method, path, ts_start, ts_end, request, response) = wire[:11]
    (status, reason, decision, blocked, error, internal_error, cut, warnings, replay, complete) = wire[11:]
    return ExchangeSnapshot(
        flow_id=flow_id,
        action=action,
        host=host,
        port=port,
        scheme=scheme,
        method=method,
        path=path,
        ts_start=ts_start,
        ts_end=ts_end,
        request=_message_back(request),
        response=None if response is None else _message_back(response),
        status=status,
        reason=reason,
        decision=None if decision is None else Decision(*decision),
        blocked=blocked,
        error=error,
        internal_error=internal_error,
        llm=None,
        cut=cut,
        warnings=warnings,
        replay=replay,
        stream_complete=complete,
    )


class RemoteBuild(ChildWork):
    """A plain exchange's event, to be built (and DLP-scanned) by the worker. Called as any builder (the
    child is not there, or could not build it), it is built here: `local` is the proxy's own guarded
    builder, so a failure is recorded as it always was."""

    __slots__ = ("cfg", "event", "local", "origin", "snap")

    def __init__(self, snap: ExchangeSnapshot, cfg: EvidenceSettings, local: BuildFirst) -> None:
        self.snap = snap
        self.cfg = cfg
        self.local = local
        self.origin: ScanOrigin | None = cfg.scan_origin
        self.event = None  # (the child always answers with the whole event)

    def frame_item(self) -> list[Any]:
        cfg = self.cfg
        recipe = [cfg.run_id, cfg.body_cap, cfg.salt.hex(), sorted(cfg.redact)]
        return [BUILD, snapshot_to_wire(self.snap), recipe]

    def __call__(self) -> dict[str, Any]:
        return self.local()


def is_build_item(item: Any) -> bool:
    return type(item) is list and len(item) == 3 and item[0] == BUILD


def build_from_frame(item: list[Any], scanner: Any) -> dict[str, Any]:
    """The child's side: the event `build_exchange_event` gives for the item, its DLP pass run here."""
    _, wire, (run_id, body_cap, salt, redact) = item
    cfg = EvidenceSettings(
        run_id=run_id, body_cap=body_cap, salt=bytes.fromhex(salt), redact=frozenset(redact), dlp=scanner
    )
    event = build_exchange_event(snapshot_from_wire(wire), cfg)
    if not isinstance(event, dict):  # (no scan origin here: the pass has run)
        raise TypeError("the event was not built whole")
    return event
