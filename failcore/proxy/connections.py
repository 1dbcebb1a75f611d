"""ConnectionEvents: connections that never become an HTTP exchange still reach the tape.

- A client that rejects failcore's certificate (mitmproxy's `tls_failed_client`, logged as "Client TLS
  handshake failed") is a `FAIL` event with reason `tls_error`, naming the host and what went wrong.
  Without it, an agent that does not trust failcore's CA leaves no trace but a log line.
- A TCP connection that is not HTTP (transparent mode relays it as raw TCP) is recorded when it ends;
  with `failcore_raw_tcp=block` (what `failcore run --contain` sets) it is refused and recorded as BLOCK,
  because failcore cannot apply its policy to a protocol it does not understand.
"""

from __future__ import annotations

import time
from typing import Any

from mitmproxy import connection, ctx, exceptions, tcp, tls

from failcore.event import EgressEvent, Target
from failcore.proxy.guard import guarded
from failcore.proxy.session import Session

RAW_TCP = ("allow", "block")
TLS_HINT = (
    "the client does not trust failcore's CA: see `failcore ca` (SSL_CERT_FILE, NODE_EXTRA_CA_CERTS, …)"
)
# mitmproxy reports a client that closed before sending a ClientHello like this: not a TLS rejection.
NOT_A_HANDSHAKE = ("connection closed early",)


def _address(conn: connection.Connection | None) -> tuple[str, int]:
    addr = getattr(conn, "address", None) or ("", 0)
    return str(addr[0]), int(addr[1])


def tls_failure_event(run_id: str, flow: str, host: str, port: int, error: str, ts: float) -> dict[str, Any]:
    return EgressEvent(
        kind="network",
        run=run_id,
        ts_start=ts,
        ts_end=ts,
        flow=flow,
        action="tls.handshake",
        target=Target(host, port, "https"),
        path="",
        summary=f"TLS handshake with {host}:{port} failed",
        decision="ALLOW",
        reason=TLS_HINT,
        outcome="FAIL",
        fail_reason="tls_error",
        error=error[:1000],
    ).to_dict()


class ConnectionEvents:
    def __init__(self, session: Session) -> None:
        self.session = session

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option(
            "failcore_raw_tcp",
            str,
            "allow",
            "TCP connections that are not HTTP (transparent modes): allow (recorded when they end) or "
            "block (refused and recorded).",
        )

    def configure(self, updated: set[str]) -> None:
        if "failcore_raw_tcp" in updated and ctx.options.failcore_raw_tcp not in RAW_TCP:
            raise exceptions.OptionsError(
                f"failcore_raw_tcp must be one of {', '.join(RAW_TCP)}, not {ctx.options.failcore_raw_tcp!r}"
            )

    @guarded("connections.tls_failed_client")
    def tls_failed_client(self, data: tls.TlsData) -> None:
        error = data.conn.error or "TLS handshake failed"
        if error in NOT_A_HANDSHAKE:
            return
        host, port = _address(data.context.server)
        sni = data.conn.sni if isinstance(data.conn, connection.Client) else None
        self.session.record(
            tls_failure_event(self.session.run_id, data.conn.id, sni or host, port, error, time.time())
        )

    @guarded("connections.tcp_start")
    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        if ctx.options.failcore_raw_tcp == "block":
            flow.metadata["failcore_blocked"] = True
            if flow.server_conn.timestamp_start is None:
                # Not connected yet (connection_strategy=lazy, as --contain sets): mitmproxy's server
                # refuses to open a connection that already carries an error, and closes the client.
                flow.server_conn.error = "failcore: TCP that is not HTTP is blocked (failcore_raw_tcp=block)"
            flow.kill()
            self._record(flow)

    @guarded("connections.tcp_message")
    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        # Already connected (eager strategy): nothing is relayed either way.
        if flow.metadata.get("failcore_blocked"):
            flow.messages[-1].content = b""

    @guarded("connections.tcp_end")
    def tcp_end(self, flow: tcp.TCPFlow) -> None:
        self._record(flow)

    @guarded("connections.tcp_error")
    def tcp_error(self, flow: tcp.TCPFlow) -> None:
        self._record(flow)

    def _record(self, flow: tcp.TCPFlow) -> None:
        if flow.metadata.get("failcore_recorded"):
            return
        flow.metadata["failcore_recorded"] = True
        host, port = _address(flow.server_conn)
        sni = flow.client_conn.sni
        blocked = bool(flow.metadata.get("failcore_blocked"))
        sent = sum(len(m.content) for m in flow.messages if m.from_client)
        received = sum(len(m.content) for m in flow.messages if not m.from_client)
        start = flow.client_conn.timestamp_start or flow.timestamp_created
        error = flow.error.msg if flow.error and not blocked else None
        event = EgressEvent(
            kind="network",
            run=self.session.run_id,
            ts_start=start,
            ts_end=time.time(),
            flow=flow.id,
            action="tcp.stream",
            target=Target(sni or host, port, "tcp"),
            path="",
            summary=f"TCP {sni or host}:{port}" + (" refused (not HTTP)" if blocked else ""),
            decision="BLOCK" if blocked else "ALLOW",
            rule="raw_tcp" if blocked else None,
            reason="failcore_raw_tcp=block: failcore's policy applies to HTTP only" if blocked else None,
            outcome="BLOCKED" if blocked else "FAIL" if error else "ok",
            fail_reason="connect_error" if error else None,
            error=error,
            bytes_out=sent,
            bytes_in=received,
        ).to_dict()
        self.session.record(event)
