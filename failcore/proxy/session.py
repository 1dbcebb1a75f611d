"""State shared by failcore's addons for one proxy run: the run id, per-flow state and the tape sink.

Per-flow state lives here rather than in `flow.metadata` because mitmproxy serialises metadata
(`mitmdump -w`), and our taps and decisions are not serialisable.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mitmproxy import flow as mflow
from mitmproxy import http

from failcore.event import EgressEvent
from failcore.evidence.internal import flow_echoes, internal_error_item
from failcore.logmask import LOG_ECHOES
from failcore.policy.model import Decision, Policy
from failcore.proxy.bodyhash import StreamSha256
from failcore.proxy.settings import AddonSettings
from failcore.runmarks import new_run_id

if TYPE_CHECKING:
    from failcore.dlp.scanner import DlpScanner
    from failcore.proxy.cutoff import CutVerdict
    from failcore.proxy.meter import LlmFlow

logger = logging.getLogger("failcore")

Sink = Callable[[dict[str, Any] | Callable[[], dict[str, Any]]], bool]


class BodyTap:
    """A `stream` callable for mitmproxy: passes every chunk through untouched, keeping a capped copy,
    the full size and sha256, and when each chunk arrived (for replaying SSE with its rhythm)."""

    __slots__ = (
        "cap",
        "chunks",
        "counting_failed",
        "digest",
        "failed",
        "kept",
        "max_chunks",
        "observers",
        "size",
        "t0",
    )

    def __init__(
        self, cap: int, max_chunks: int = 10_000, failed: Callable[[Exception, object], bool] | None = None
    ) -> None:
        self.cap = cap
        self.max_chunks = max_chunks
        self.kept = bytearray()
        self.size = 0
        self.digest = StreamSha256()  # (hashed off the event loop: failcore.proxy.bodyhash)
        self.chunks: list[tuple[float, int]] = []
        self.t0 = time.time()
        # Other concerns (usage metering, stream DLP) see each chunk as it passes, without copies.
        self.observers: list[Callable[[bytes], None]] = []
        # Told when an observer (or the tap) raises (failcore.proxy.guard.StreamFailures.stop): True
        # means forward nothing more. Without it, the exception goes to mitmproxy.
        self.failed = failed
        # Whether the tap's own counting raised once (recorded then; the observers still report theirs).
        self.counting_failed = False

    def __call__(self, chunk: bytes) -> bytes | tuple[bytes, ...]:
        if not chunk:
            return chunk
        # The observers first: a chunk a failing one stops (fail_open: false) never counts as forwarded.
        for observe in self.observers:
            try:
                observe(chunk)
            except Exception as e:
                if self.failed is None:
                    raise
                # Kept: asked again about the next chunk (its failures are counted by `failed`).
                if self.failed(e, observe):
                    return ()
        try:
            n = len(chunk)
            self.size += n
            self.digest.update(chunk)
            room = self.cap - len(self.kept)
            if room > 0:
                self.kept += chunk[:room]
            if len(self.chunks) < self.max_chunks:
                self.chunks.append((round((time.time() - self.t0) * 1000, 3), n))
        except Exception as e:
            if self.failed is None:
                raise
            if not self.counting_failed:  # recorded once
                self.counting_failed = True
                if self.failed(e, self):
                    return ()
        return chunk

    def stream_evidence(self) -> dict[str, Any]:
        return {
            "chunks": [list(c) for c in self.chunks],
            "chunk_count": len(self.chunks),
            "chunks_truncated": len(self.chunks) >= self.max_chunks,
        }


@dataclass(slots=True)
class FlowState:
    decision: Decision | None = None
    decided_host: str | None = None
    blocked: bool = False
    request_tap: BodyTap | None = None
    # An LLM call's streamed request body, copied aside to be metered (proxy.streamcopy.WholeBodyCopy).
    request_copy: Any = None
    response_tap: BodyTap | None = None
    internal_error: str | None = None
    ws_messages: int = 0
    # Set by failcore.proxy.cutoff when a budget/DLP rule ended the response stream mid-way
    # (the schema's `cut` block: reason, at_bytes, detail). mitmproxy's own flow.error then only
    # says how the connection died ("Client disconnected.", an HTTP/1 protocol error, …).
    cut: dict[str, Any] | None = None
    llm: LlmFlow | None = None
    # Registered before StreamTap builds the response stream: observers see every chunk the client
    # receives; cut guards see every chunk before it is forwarded and may stop the stream.
    stream_observers: list[Callable[[bytes], None]] = field(default_factory=list)
    # The same for a streamed request body.
    request_observers: list[Callable[[bytes], None]] = field(default_factory=list)
    # Warnings other concerns attach to this flow's event (budget thresholds, …).
    warnings: list[dict[str, str]] = field(default_factory=list)
    cut_guards: list[Callable[[bytes], CutVerdict | None]] = field(default_factory=list)
    # Set by failcore.proxy.replayer.Replayer: how a replay answered this flow (the event's `replay` block).
    replay: dict[str, Any] | None = None
    # Whether the response streams through (decided once, at responseheaders; see response_streams).
    response_streams: bool | None = None
    # The same for the request body (see request_streams), decided at requestheaders.
    request_streams: bool | None = None
    # When BudgetGuard counted this request (it takes it back if a tape answers it).
    request_reserved_at: float | None = None


# Set in `flow.metadata` on a flow failcore answered itself (a refusal it built): what keys on failcore's
# own answer reads this, never an `X-FailCore-Decision` header, which any upstream can send too.
ANSWERED = "failcore_answered"


def answer(flow: http.HTTPFlow, response: http.Response) -> None:
    """Answer `flow` with a response failcore built (a refusal), marked as failcore's own."""
    flow.response = response
    flow.metadata[ANSWERED] = True


def answered_by_failcore(flow: http.HTTPFlow) -> bool:
    return bool(flow.metadata.get(ANSWERED))


@dataclass(frozen=True, slots=True)
class Fronted:
    """A client connection every request and TCP stream of which takes `decision`: its TLS SNI named
    another host than its CONNECT (failcore.proxy.gate.PolicyGate.tls_clienthello), held a secret
    (failcore.proxy.hostdlp), or could not be checked under `fail_open: false`. `warning`, if any,
    goes on each of its requests' events."""

    decision: Decision
    warning: dict[str, str] | None
    blocked: bool


@dataclass(slots=True)
class Session:
    run_id: str = field(default_factory=new_run_id)
    policy: Policy | None = None
    sink: Sink | None = None
    flows: dict[str, FlowState] = field(default_factory=dict)
    internal_errors: int = 0
    # The active policy's DLP rules, compiled; swapped together with `policy`.
    dlp: DlpScanner | None = None
    salt: bytes = b""
    # The failcore options, checked; published by failcore.proxy.settings.Settings (defaults until then).
    settings: AddonSettings = field(default_factory=AddonSettings)
    # Set by failcore.proxy.replayer.Replayer when this run replays a recorded one (run_start's `replay_of`).
    replay_of: dict[str, Any] | None = None
    # Events from before the tape opened (the policy is loaded in `configure`, the writer starts in
    # `running`): kept and handed over when the sink attaches, so a policy load is never lost.
    pending: list[dict[str, Any] | Callable[[], dict[str, Any]]] = field(default_factory=list)
    # Client connections whose TLS SNI named another host than their CONNECT, by client id
    # (every request and TCP stream on them takes that verdict).
    fronted: dict[str, Fronted] = field(default_factory=dict)
    # Counts the large, long-lived structures loaded after start-up (genai-prices' price data, by the
    # meter's warm-up thread): failcore.proxy.gctune freezes the heap again so the collector's full
    # walks skip them too.
    heap_loads: int = 0

    def state(self, flow: mflow.Flow) -> FlowState:
        st = self.flows.get(flow.id)
        if st is None:
            st = self.flows[flow.id] = FlowState()
        return st

    def finish(self, flow: mflow.Flow) -> FlowState | None:
        return self.flows.pop(flow.id, None)

    def record(self, item: dict[str, Any] | Callable[[], dict[str, Any]]) -> None:
        if self.sink is not None:
            self.sink(item)
        elif len(self.pending) < 1000:
            self.pending.append(item)

    def attach(self, sink: Sink) -> None:
        self.sink = sink
        pending, self.pending = self.pending, []
        for item in pending:
            sink(item)

    @property
    def fail_open(self) -> bool:
        return self.policy.fail_open if self.policy else True

    def internal_error(self, flow: mflow.Flow | None, where: str, exc: BaseException) -> None:
        """Record a failure inside failcore itself. Never raises: this is the last line of defence.
        (What `fail_open: false` then refuses is failcore.proxy.failclosed's.)"""
        try:
            self.internal_errors += 1
            message = f"{type(exc).__name__}: {exc}"
            # The exception can quote what it failed on (a header, a URL): the log line and the event
            # are masked with the DLP rules and the echoes of the flow's credentials.
            redact = self.policy.redact_headers if self.policy else frozenset()
            echoes = flow_echoes(flow, redact, self.salt)
            logger.warning("failcore internal error in %s: %s", where, message, extra={LOG_ECHOES: echoes})
            tb = traceback.format_exception(exc)[-6:]
            event = EgressEvent(
                kind="internal_error",
                run=self.run_id,
                ts_start=time.time(),
                flow=flow.id if flow else None,
                fail_reason="internal_error",
                error=message,
                detail={"where": where, "fail_open": self.fail_open, "traceback": "".join(tb)[-4000:]},
            )
            self.record(internal_error_item(self.dlp, event.to_dict(), echoes))
            if flow is not None:
                self.state(flow).internal_error = f"{where}: {message}"
        except Exception:  # pragma: no cover - logging must not take the proxy down
            logger.exception("failcore could not record an internal error")
