"""An exchange's whole event built in the DLP evidence worker, not in the proxy.

Measured in a real mitmdump under the plain-HTTP throughput load (BENCHMARKS.md, the tenth session):
building one keep-alive 1 KB JSON exchange's event costs the proxy ~47 µs of CPU with its GIL held
(redacting headers, hashing and decoding bodies, the event dict), on top of the DLP pass the worker
already runs. The proxy is GIL-bound under load: moving that work to the tape writer's thread was
measured to save nothing, so it goes to the worker process with the DLP pass. An LLM call's event
(a ~30 KB prompt, its answer streamed through a BodyTap) cost the event loop 70-190 µs to build
(benchmarks/llm_exchange_cost.py): it goes too.

The exchange's snapshot travels as plain JSON (`snapshot_to_wire`: header fields and bodies as latin-1
text, so every byte comes back as it was; timestamps as orjson writes floats, exactly), and the child
runs the very `build_exchange_event` the proxy would, with its DLP pass in place. A streamed body
travels as what its tap kept (the recorded prefix, the full size, the sha256 counted as it passed, its
stream block: `TapRecord`), an LLM call as its meter's evidence and warnings and what the
contract-drift check reads of its parsed call (`LlmRecord`). No body past the recorded cap goes (no
past-cap scan, of a held body or a streamed one).
A value orjson refuses fails the frame, and the proxy builds the batch. Anything else, and every
exchange while the child is starting, refused or lost, is built by the proxy as before: `RemoteBuild`
is also a builder the tape writer calls itself (in its thread, never on the event loop).
"""

from __future__ import annotations

from typing import Any

import orjson

from failcore.evidence.exchange import (
    EvidenceSettings,
    ExchangeSnapshot,
    MessageSnapshot,
    build_exchange_event,
    past_cap_scans,
)
from failcore.evidence.scanworker import BuildFirst, ChildWork, ScanOrigin
from failcore.llm.call import LlmCall
from failcore.policy.model import Decision

# The first element of a build item on the pipe (a scan item is an event dict, or a list opening with one).
BUILD = "build"


def remote_eligible(snap: ExchangeSnapshot, cfg: EvidenceSettings, body_bytes: int) -> bool:
    """Whether the worker can build this exchange's event exactly as the proxy would. `body_bytes`:
    what its bodies decode to, exactly (the recorder asks only when its probe did not stop early)."""
    return (
        cfg.scan_origin is not None
        and cfg.dlp is not None
        and body_bytes <= cfg.body_cap
        and (snap.llm is None or _llm_crosses(snap.llm))
        and not past_cap_scans(snap)
    )


def _llm_crosses(llm: Any) -> bool:
    return type(llm.evidence) is dict


# What the contract-drift check (failcore.llm.drift.contract_drift) reads of a parsed call: only these
# cross, and only for a call that asked for a response format (_contract_drift checks no other).
DRIFT_FIELDS = (
    "api",
    "response_format",
    "status",
    "output_truncated",
    "tool_calls",
    "tool_inputs",
    "output_text",
)


def _drift_inputs(call: LlmCall | None) -> list[Any] | None:
    if call is None or call.response_format is None:
        return None
    return [getattr(call, name) for name in DRIFT_FIELDS]


class LlmRecord:
    """What building an LLM call's event reads of its meter (failcore.proxy.meter.LlmFlow), off the
    wire: its evidence, its warnings, and for a call that asked for a response format what the
    contract-drift check reads of the parsed call."""

    __slots__ = ("call", "evidence", "warnings")

    def __init__(
        self, evidence: dict[str, Any], warnings: list[dict[str, str]], drift: list[Any] | None = None
    ) -> None:
        self.evidence = evidence
        self.warnings = warnings
        self.call = None if drift is None else LlmCall("", **dict(zip(DRIFT_FIELDS, drift, strict=True)))


class _Digest:
    __slots__ = ("hex",)

    def __init__(self, hex_digest: str) -> None:
        self.hex = hex_digest

    def hexdigest(self) -> str:
        return self.hex


class TapRecord:
    """What building a streamed body's evidence reads of its tap (failcore.proxy.session.BodyTap), off
    the wire: the recorded prefix, the full size, the sha256 of every byte and the stream block. No
    observers: a body with a past-cap scan is never sent."""

    __slots__ = ("digest", "kept", "size", "stream")
    observers = ()

    def __init__(self, kept: bytes, size: int, sha256_hex: str, stream: dict[str, Any]) -> None:
        self.kept = kept
        self.size = size
        self.digest = _Digest(sha256_hex)
        self.stream = stream

    def stream_evidence(self) -> dict[str, Any]:
        return self.stream


def _tap(tap: Any) -> list[Any] | None:
    if tap is None:
        return None
    return [bytes(tap.kept).decode("latin-1"), tap.size, tap.digest.hexdigest(), tap.stream_evidence()]


def _tap_back(wire: list[Any] | None) -> TapRecord | None:
    if wire is None:
        return None
    kept, size, sha256_hex, stream = wire
    return TapRecord(kept.encode("latin-1"), size, sha256_hex, stream)


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
    return [
        m.http_version,
        _fields(m.headers),
        content,
        m.ts_start,
        m.ts_end,
        _fields(m.trailers),
        _tap(m.tap),
    ]


def _message_back(wire: list[Any]) -> MessageSnapshot:
    http_version, headers, content, ts_start, ts_end, trailers, tap = wire
    return MessageSnapshot(
        http_version=http_version,
        headers=_fields_back(headers),  # type: ignore[arg-type]
        content=None if content is None else content.encode("latin-1"),
        tap=_tap_back(tap),  # type: ignore[arg-type]
        ts_start=ts_start,
        ts_end=ts_end,
        trailers=_fields_back(trailers),
    )


def snapshot_to_wire(snap: ExchangeSnapshot) -> list[Any]:
    """An exchange's snapshot (remote_eligible) as JSON-ready data."""
    d = snap.decision
    llm = snap.llm
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
        None if llm is None else [llm.evidence, llm.warnings, _drift_inputs(llm.call)],
    ]


def snapshot_from_wire(wire: list[Any]) -> ExchangeSnapshot:
    (flow_id, action, host, port, scheme, method, path, ts_start, ts_end, request, response) = wire[:11]
    (status, reason, decision, blocked, error, internal_error, cut, warnings, replay, complete, llm) = wire[
        11:
    ]
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
        llm=None if llm is None else LlmRecord(*llm),  # type: ignore[arg-type]
        cut=cut,
        warnings=warnings,
        replay=replay,
        stream_complete=complete,
    )


class RemoteBuild(ChildWork):
    """An exchange's event, to be built (and DLP-scanned) by the worker. Called as any builder (the
    child is not there, or could not build it), it is built here: `local` is the proxy's own guarded
    builder, so a failure is recorded as it always was."""

    __slots__ = ("cfg", "event", "frame", "local", "origin", "snap")

    def __init__(
        self, snap: ExchangeSnapshot, cfg: EvidenceSettings, local: BuildFirst | None = None
    ) -> None:
        self.snap = snap
        self.cfg = cfg
        self.local = local
        self.origin: ScanOrigin | None = cfg.scan_origin
        self.event = None  # (the child always answers with the whole event)
        self.frame: bytes | None = None

    def frame_item(self) -> list[Any]:
        cfg = self.cfg
        recipe = [cfg.run_id, cfg.body_cap, cfg.salt.hex(), sorted(cfg.redact)]
        return [BUILD, snapshot_to_wire(self.snap), recipe]

    def serialise_now(self) -> bool:
        """Serialise the frame item now, while the exchange's headers and bodies are still in the CPU's
        caches: the tape writer's thread reaches a batch up to its window (0.1 s) later, when they no
        longer are, and the same work there cost several times as much of the proxy's GIL. What
        orjson refuses is left to the writer, which then builds the event itself. True when the
        frame was made: it holds all the event is built from (see let_go)."""
        try:
            self.frame = orjson.dumps(self.frame_item())
        except TypeError:
            self.frame = None
        return self.frame is not None

    def let_go(self, local: BuildFirst) -> None:
        """Drop the snapshot once serialised: `local` builds from the frame instead (snapshot_of_frame).
        Kept until the writer's batch, the snapshot held the exchange's headers and bodies for up to
        0.1 s, and they were freed, cold, from the writer's thread."""
        assert self.frame is not None
        self.snap = None  # type: ignore[assignment]
        self.local = local

    def frame_bytes(self) -> bytes:
        return self.frame if self.frame is not None else orjson.dumps(self.frame_item())

    def __call__(self) -> dict[str, Any]:
        if self.local is None:
            raise RuntimeError("a RemoteBuild has no local builder")
        return self.local()


def snapshot_of_frame(frame: bytes) -> ExchangeSnapshot:
    """The snapshot a RemoteBuild's frame was made from (as the child reads it)."""
    _, wire, _ = orjson.loads(frame)
    return snapshot_from_wire(wire)


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
