"""The one event type that flows through failcore: flow → decision → EgressEvent → tape → views.

An `EgressEvent` is what the tape stores for every exchange (and for the proxy's own lifecycle:
run start/end, policy loads, internal errors). The JSON Schema in `failcore/schema/` describes its
serialised form, `EgressEvent.to_dict()`; bump `SCHEMA_VERSION` when that form changes incompatibly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

SCHEMA_VERSION: Final = 2
# Versions readers accept: 1 (network only) and 2 (adds the runtime kinds tool/fs/exec/connect).
READABLE_VERSIONS: Final[tuple[int, ...]] = (1, 2)

Kind = Literal[
    "network",
    "websocket",
    "policy",
    "internal_error",
    "run_start",
    "run_end",
    "tool",
    "fs",
    "exec",
    "connect",
]
# Kinds the in-process runtime (failcore.runtime) produces; a child of `failcore run` may send only these.
RUNTIME_KINDS: Final[tuple[str, ...]] = ("tool", "fs", "exec", "connect")
Decision = Literal["ALLOW", "WARN", "BLOCK"]
Outcome = Literal["ok", "BLOCKED", "FAIL"]
FailReason = Literal[
    "upstream_status",
    "connect_error",
    "tls_error",
    "timeout",
    "client_disconnect",
    "killed",
    "internal_error",
    "tool_error",
]
FAIL_REASONS: Final[tuple[str, ...]] = (
    "upstream_status",
    "connect_error",
    "tls_error",
    "timeout",
    "client_disconnect",
    "killed",
    "internal_error",
    "tool_error",
)
# Kinds the tape writer produces itself; listed here so readers know every kind a tape can hold.
WRITER_KINDS: Final[tuple[str, ...]] = ("checkpoint", "dropped", "internal_error")


@dataclass(slots=True)
class Target:
    host: str
    port: int
    scheme: str

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "scheme": self.scheme}


@dataclass(slots=True)
class EgressEvent:
    kind: Kind
    run: str
    ts_start: float
    ts_end: float | None = None
    flow: str | None = None
    egress: str = "NETWORK"
    action: str | None = None
    target: Target | None = None
    method: str | None = None
    path: str | None = None
    summary: str | None = None
    decision: Decision | None = None
    rule: str | None = None
    reason: str | None = None
    would_block: bool = False
    outcome: Outcome | None = None
    fail_reason: FailReason | None = None
    error: str | None = None
    status: int | None = None
    latency_ms: float | None = None
    ttfb_ms: float | None = None
    bytes_out: int = 0
    bytes_in: int = 0
    request: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    stream: dict[str, Any] | None = None
    llm: dict[str, Any] | None = None
    dlp: dict[str, Any] | None = None
    warnings: list[dict[str, str]] = field(default_factory=list)
    cut: dict[str, Any] | None = None
    # Runtime kinds (tool/fs/exec/connect): the guarded call this event belongs to, its parent call,
    # and the kind's own block (see RUNTIME_KINDS and the v2 schema).
    call: str | None = None
    parent_call: str | None = None
    payload: dict[str, Any] | None = None
    # Kind-specific payload (policy load details, websocket message, run summary, exception…).
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "v": SCHEMA_VERSION,
            "run": self.run,
            "ts_start": self.ts_start,
            "ts_end": self.ts_end,
        }
        if self.flow is not None:
            out["flow"] = self.flow
        if self.kind in ("network", "websocket"):
            out.update(
                egress=self.egress,
                action=self.action,
                target=self.target.to_dict() if self.target else None,
                method=self.method,
                path=self.path,
                summary=self.summary,
                decision=self.decision,
                rule=self.rule,
                reason=self.reason,
                would_block=self.would_block,
                outcome=self.outcome,
                fail_reason=self.fail_reason,
                error=self.error,
                status=self.status,
                latency_ms=self.latency_ms,
                ttfb_ms=self.ttfb_ms,
                bytes_out=self.bytes_out,
                bytes_in=self.bytes_in,
                request=self.request,
                response=self.response,
                stream=self.stream,
                llm=self.llm,
                dlp=self.dlp,
                warnings=self.warnings,
                cut=self.cut,
            )
        elif self.kind in RUNTIME_KINDS:
            out.update(
                egress=self.egress,
                action=self.action,
                call=self.call,
                parent_call=self.parent_call,
                summary=self.summary,
                decision=self.decision,
                rule=self.rule,
                reason=self.reason,
                would_block=self.would_block,
                outcome=self.outcome,
                fail_reason=self.fail_reason,
                error=self.error,
                latency_ms=self.latency_ms,
                dlp=self.dlp,
                warnings=self.warnings,
            )
            if self.target is not None:
                out["target"] = self.target.to_dict()
            out[self.kind] = self.payload or {}
        elif self.fail_reason is not None:
            out["fail_reason"] = self.fail_reason
            out["error"] = self.error
        if self.detail:
            out["detail"] = self.detail
        return out
