"""ConnectionEvents: a connection that fails before it becomes an exchange still reaches the tape.

A client that rejects failcore's certificate (mitmproxy's `tls_failed_client`, logged as "Client TLS
handshake failed") is a `FAIL` event with reason `tls_error`, naming the host and what went wrong.
Without it, an agent that does not trust failcore's CA leaves no trace but a log line. (TCP that is not
HTTP is `failcore.proxy.tcpstream`'s.)
"""

from __future__ import annotations

import time
from typing import Any

from mitmproxy import connection, tls

from failcore.event import EgressEvent, Target
from failcore.proxy.guard import guarded
from failcore.proxy.session import Session

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
