"""TcpRecorder: raw (non-HTTP) TCP through a tunnel yields an event, is judged, and is DLP-scanned.

When the bytes inside an allowed CONNECT (or inside its TLS) are not HTTP, mitmproxy relays them as a
TCP flow. Each such stream becomes one `network` event with action `tcp.stream` and scheme `tcp`:
bytes and messages each way, timing, outcome. The policy judges it with `tcp_verdicts`: a rule with
`scheme: tcp`, or one that names host/port only, decides bytes that are not HTTP; bytes that start
like an HTTP request (a method token and a space, after any leading whitespace/NUL a server skips)
may be HTTP smuggled past mitmproxy's protocol detection, and an HTTP rule or a budget that could
apply to the endpoint, which failcore cannot check on them, applies to the whole stream. When the two
verdicts differ, the client's bytes are held until their first byte that is not whitespace/NUL (at
most HOLD_MAX bytes; past that the stream counts as HTTP), then relayed together or refused; the
server's bytes (an SSH or MySQL greeting) pass meanwhile. A BLOCK closes the connection before a
client byte is relayed. A client that closes while its bytes are still held (it sent only
whitespace/NUL) leaves them unrelayed: mitmproxy half-closes the server side on the client's close
without a hook first, and relaying them before a verdict would let HOLD_MAX bytes of a chosen
whitespace pattern past a refusal. The event counts them (`detail.held_bytes`, and the summary).
Bytes that did not start like HTTP may carry it later (behind a PROXY protocol v2 header, after a
SOCKS handshake with a proxy upstream): a client message that ends an HTTP request line (REQUEST_LINE_END,
found across message boundaries) then takes the verdict for HTTP, and a BLOCK refuses that message and
the stream (what left before it holds no whole request line; `detail.http_seen_at` says where it ended).
HTTP inside TLS or another encoding that failcore does not terminate is not seen.
DLP scans every message as it is relayed: a hit whose action is BLOCK (enforce mode) stops the
message that completes it, and the connection with it. With `failcore_raw_tcp=block` (what
`failcore run --contain` sets) every such stream is refused and recorded as BLOCK: failcore's policy
is written for HTTP and cannot judge a protocol it does not read.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import tcp

from failcore.event import EgressEvent, Target
from failcore.policy.decide import looks_like_http, tcp_verdicts
from failcore.policy.model import Decision
from failcore.proxy.failclosed import REFUSED, close_client
from failcore.proxy.guard import guarded
from failcore.proxy.session import Session

logger = logging.getLogger("failcore")

# Bytes of each direction kept to find a secret that spans two messages.
OVERLAP = 1024
MAX_HITS = 100
# Client bytes held at most while they do not yet tell whether the stream starts like HTTP.
HOLD_MAX = 64
# The end of an HTTP/1 request line (or of the HTTP/2 preface's first line) in client bytes: HTTP carried
# inside a stream that did not start like HTTP (behind a PROXY protocol v2 header, a SOCKS handshake with
# a proxy upstream, …). Only the line's end is sought: it is short, so a few bytes kept from the previous
# message find it however the client splits its bytes, and a server acts on no request before it.
REQUEST_LINE_END = re.compile(rb" HTTP/[0-9]\.[0-9][ \t]{0,16}\r?\n", re.IGNORECASE)
REQUEST_LINE_TAIL = 31
RAW_TCP_BLOCKED = Decision(
    "BLOCK", "raw_tcp", "failcore_raw_tcp=block: failcore's policy applies to HTTP only", True, "BLOCK"
)


@dataclass(slots=True)
class TcpState:
    host: str
    port: int
    decision: Decision | None
    t0: float = field(default_factory=time.time)
    first_in: float | None = None
    bytes_out: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    messages_in: int = 0
    blocked_by: str | None = None
    tails: dict[bool, bytes] = field(default_factory=lambda: {True: b"", False: b""})
    offsets: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    hits: list[dict[str, Any]] = field(default_factory=list)
    hits_truncated: bool = False
    # Set while the verdict waits for the client's first bytes: the verdict if they start like HTTP.
    if_http: Decision | None = None
    held: bytes = b""
    # Set once the first bytes were not HTTP: the verdict for HTTP seen later in the client's bytes.
    later_http: Decision | None = None
    request_tail: bytes = b""
    # Where in the client's bytes a request line ended, if one did after non-HTTP first bytes.
    http_seen_at: int | None = None


def stream_target(flow: tcp.TCPFlow) -> tuple[str, int]:
    """The tunnel's destination, as a name where the client gave one (as for HTTP requests)."""
    address = flow.server_conn.address
    host, port = (str(address[0]), int(address[1])) if address else ("", 0)
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host, port
    return (flow.client_conn.sni or host), port


class TcpRecorder:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.streams: dict[str, TcpState] = {}
        # The streams' flows, by id: a stream mitmproxy has not ended when the proxy stops is recorded then.
        self.flows: dict[str, tcp.TCPFlow] = {}

    @guarded("tcp.tcp_start")
    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self.flows[flow.id] = flow
        host, port = stream_target(flow)
        if self.session.settings.raw_tcp == "block":
            self.streams[flow.id] = TcpState(host, port, RAW_TCP_BLOCKED, blocked_by="raw_tcp")
            if flow.server_conn.timestamp_start is None:
                # Not connected yet (connection_strategy=lazy, as --contain sets): mitmproxy's server
                # refuses to open a connection that already carries an error, and closes the client.
                flow.server_conn.error = "failcore: TCP that is not HTTP is blocked (failcore_raw_tcp=block)"
            flow.kill()
            close_client(flow)
            return
        policy = self.session.policy
        decision = if_http = None
        if policy is not None:
            decision, if_http = tcp_verdicts(policy, host=host, port=port)
        fronted = self.session.fronted.get(flow.client_conn.id)
        if fronted is not None and fronted.blocked:
            decision = if_http = fronted.decision
        state = self.streams[flow.id] = TcpState(host, port, decision)
        if if_http != decision:
            state.if_http = if_http  # decided by the client's first bytes (tcp_message)
        elif decision is not None and decision.decision == "BLOCK":
            state.blocked_by = "policy"
            close_client(flow)

    @guarded("tcp.tcp_message")
    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        message = flow.messages[-1]
        if flow.metadata.get(REFUSED):
            message.content = b""  # its check failed under fail_open: false (failcore.proxy.failclosed)
            return
        state = self.streams.get(flow.id)
        if state is None:
            return
        if state.blocked_by is not None:
            # Nothing more is relayed once the stream is refused, even if closing it lags behind.
            message.content = b""
            return
        data = message.content
        out = message.from_client
        if out and state.if_http is not None:
            data = self._first_bytes(flow, state, data)
            message.content = data
            if state.blocked_by is not None or not data:
                return
        if out and state.later_http is not None and self._http_later(flow, state, data):
            message.content = b""
            return
        if out:
            state.bytes_out += len(data)
            state.messages_out += 1
        else:
            state.bytes_in += len(data)
            state.messages_in += 1
            if state.first_in is None:
                state.first_in = time.time()
        if self._dlp_blocks(state, out, data):
            state.blocked_by = "dlp"
            message.content = b""
            close_client(flow)

    def _first_bytes(self, flow: tcp.TCPFlow, state: TcpState, data: bytes) -> bytes:
        """What to relay of a client message while the verdict waits for the stream's first bytes:
        nothing while they hold only whitespace/NUL (kept), else everything held so far, once the
        verdict they call for allows it."""
        held = state.held + data
        http = looks_like_http(held)
        if http is None and len(held) <= HOLD_MAX:
            state.held = held
            return b""
        if http is not False:  # starts like HTTP, or leading bytes past HOLD_MAX
            state.decision = state.if_http
        else:
            state.later_http = state.if_http
        state.if_http, state.held = None, b""
        if state.decision is not None and state.decision.decision == "BLOCK":
            state.blocked_by = "policy"
            close_client(flow)
            return b""
        return held

    def _http_later(self, flow: tcp.TCPFlow, state: TcpState, data: bytes) -> bool:
        """Whether `data` must not be relayed: it ends an HTTP request line in a stream whose first bytes
        were not HTTP, and the verdict for HTTP refuses the stream. From then on that verdict is the
        stream's (a WARN in observe mode is recorded and the bytes pass)."""
        buffer = state.request_tail + data
        found = REQUEST_LINE_END.search(buffer)
        if found is None:
            state.request_tail = buffer[-REQUEST_LINE_TAIL:]
            return False
        assert state.later_http is not None
        state.decision, state.later_http, state.request_tail = state.later_http, None, b""
        state.http_seen_at = state.bytes_out + found.end() - (len(buffer) - len(data))
        if state.decision.decision != "BLOCK":
            return False
        state.blocked_by = "policy"
        close_client(flow)
        return True

    def _dlp_blocks(self, state: TcpState, out: bool, data: bytes) -> bool:
        scanner = self.session.dlp
        if scanner is None or not data:
            return False
        settings = scanner.settings
        if not (settings.scan_request if out else settings.scan_response):
            return False
        tail = state.tails[out]
        buffer = tail + data
        base = state.offsets[out] - len(tail)
        where = "request.body" if out else "response.body"
        blocks = False
        for hit in scanner.engine.scan(buffer):
            if hit.end <= len(tail):
                continue  # reported with the message that completed it
            action = scanner.action(hit)
            blocks = blocks or (action == "BLOCK" and scanner.enforce and out)
            if len(state.hits) >= MAX_HITS:
                state.hits_truncated = True
                continue
            state.hits.append(
                {
                    "rule": hit.rule_id,
                    "severity": hit.severity,
                    "category": hit.category,
                    "location": f"{where}@{base + hit.start}",
                    "preview": hit.preview,
                    "fingerprint": hit.fingerprint,
                    "action": action,
                    "taint_source": None,
                }
            )
        state.offsets[out] += len(data)
        state.tails[out] = buffer[-OVERLAP:]
        return blocks

    @guarded("tcp.tcp_end")
    def tcp_end(self, flow: tcp.TCPFlow) -> None:
        self._record(flow)

    @guarded("tcp.tcp_error")
    def tcp_error(self, flow: tcp.TCPFlow) -> None:
        self._record(flow)

    def done(self) -> None:
        """A stream still open when the proxy stops (mitmproxy ends it no more) is recorded now."""
        for flow in list(self.flows.values()):
            try:
                self._record(flow, at_stop=True)
            except Exception as exc:  # (recorded; the others still are)
                self.session.internal_error(flow, "tcp.done", exc)
        self.flows.clear()

    def _record(self, flow: tcp.TCPFlow, *, at_stop: bool = False) -> None:
        self.flows.pop(flow.id, None)
        state = self.streams.pop(flow.id, None)
        if state is None:
            return
        now = time.time()
        decision = state.decision
        error = flow.error.msg if flow.error else None
        if state.blocked_by is not None:
            outcome, fail_reason = "BLOCKED", None
        elif error:
            outcome, fail_reason = (
                "FAIL",
                "connect_error" if flow.server_conn.timestamp_start is None else "killed",
            )
        else:
            outcome, fail_reason = "ok", None
        verdict = decision.decision if decision else "ALLOW"
        reason = decision.reason if decision else None
        if state.blocked_by == "raw_tcp":
            error = None  # the refusal is the outcome, not a failure
        if state.blocked_by == "dlp":
            verdict, reason = "BLOCK", "a DLP rule with action BLOCK matched the stream"
        summary = f"TCP {state.host}:{state.port} {state.bytes_out} B out, {state.bytes_in} B in"
        if state.held:
            summary += f", {len(state.held)} B held unjudged (not relayed)"
        if state.http_seen_at is not None:
            summary += f", an HTTP request line ends at client byte {state.http_seen_at}"
        event = EgressEvent(
            kind="network",
            run=self.session.run_id,
            ts_start=state.t0,
            ts_end=now,
            flow=flow.id,
            action="tcp.stream",
            target=Target(state.host, state.port, "tcp"),
            method=None,
            path="",
            summary=summary,
            decision=verdict,
            rule=decision.rule if decision else None,
            reason=reason,
            would_block=decision.would_block if decision else False,
            outcome=outcome,
            fail_reason=fail_reason,
            error=error,
            latency_ms=round((now - state.t0) * 1000, 3),
            ttfb_ms=round((state.first_in - state.t0) * 1000, 3) if state.first_in else None,
            bytes_out=state.bytes_out,
            bytes_in=state.bytes_in,
            dlp={"hits": state.hits, "truncated": state.hits_truncated} if state.hits else None,
            detail={
                "messages_out": state.messages_out,
                "messages_in": state.messages_in,
                "tls": flow.client_conn.tls_established,
                "sni": flow.client_conn.sni,
                "blocked_by": state.blocked_by,
                # Client bytes still held when the stream ended: sent, never judged nor relayed.
                "held_bytes": len(state.held),
                "http_seen_at": state.http_seen_at,
                "open_when_the_proxy_stopped": at_stop,
            },
        )
        self.session.record(event.to_dict())
