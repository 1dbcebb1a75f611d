"""`fail_open: false`: when a failcore hook fails, what it was deciding is refused.

failcore.proxy.guard records the failure (an `internal_error` event), then calls `refuse` with the
hook's name and its argument. What is refused depends on what the hook decides:
- an HTTP request or response not yet sent on: answered 502 `FAIL_CLOSED` by failcore, never forwarded;
- a WebSocket message (`websocket_message`): dropped;
- a TCP message (`tcp_message`): relayed as nothing, and the stream closed; a TCP stream (`tcp_start`):
  closed;
- a DNS question: answered SERVFAIL;
- a server connection (`server_connect`): not opened;
- a TLS ClientHello (`tls_clienthello`): its SNI is not offered to the upstream and every request on
  the connection is refused (the SNI was never checked).
"""

from __future__ import annotations

import logging

import orjson
from mitmproxy import ctx, dns, http, tcp, tls
from mitmproxy import flow as mflow
from mitmproxy.net.dns import response_codes
from mitmproxy.proxy import server_hooks

from failcore.policy.model import Decision
from failcore.proxy.session import Fronted, Session

logger = logging.getLogger("failcore")


def refuse(session: Session, hook: str, subject: object, where: str, message: str) -> None:
    """Refuse what `hook` (called with `subject`) was deciding. Never raises."""
    try:
        _refuse(session, hook, subject, where, message)
    except Exception:  # pragma: no cover - the failure is already on the tape
        logger.exception("failcore could not fail closed after a failure in %s", where)


def _refuse(session: Session, hook: str, subject: object, where: str, message: str) -> None:
    said = f"failcore failed in {where} and the policy says fail_open: false"
    if isinstance(subject, http.HTTPFlow):
        if subject.websocket is not None and subject.response is not None:
            if hook == "websocket_message" and subject.websocket.messages:
                subject.websocket.messages[-1].drop()
        elif subject.live:
            subject.response = fail_closed_response(where, message, subject.id)
    elif isinstance(subject, tcp.TCPFlow):
        if hook == "tcp_message" and subject.messages:
            subject.messages[-1].content = b""
        if hook in ("tcp_start", "tcp_message"):
            close_client(subject)
    elif isinstance(subject, dns.DNSFlow):
        if subject.live and subject.response is None:
            subject.response = subject.request.fail(response_codes.SERVFAIL)
    elif isinstance(subject, server_hooks.ServerConnectionHookData):
        if hook == "server_connect":
            subject.server.error = f"{said}: the connection was not opened"
    elif isinstance(subject, tls.ClientHelloData):
        # An address is sent as no name at all.
        server = subject.context.server
        server.sni = str(server.address[0]) if server.address is not None else ""
        decision = Decision("BLOCK", "internal_error", said, True, "BLOCK")
        session.fronted[subject.context.client.id] = Fronted(decision, None, blocked=True)


def fail_closed_response(where: str, message: str, event_id: str) -> http.Response:
    body = orjson.dumps(
        {
            "error": {
                "type": "failcore_internal_error",
                "message": "failcore failed while handling this request and the policy says "
                "fail_open: false, so the request was not forwarded",
                "where": where,
                "detail": message,
                "event": event_id,
            }
        }
    )
    return http.Response.make(
        502, body, {"Content-Type": "application/json", "X-FailCore-Decision": "FAIL_CLOSED"}
    )


def close_client(flow: mflow.Flow) -> None:
    """Close the client connection (and with it a TCP stream) from inside a hook.

    mitmproxy's `flow.kill()` does not stop a TCP flow; its connection handler can close a connection.
    Should that fail, tcp_message still relays nothing for a blocked stream."""
    try:
        handler = ctx.master.addons.get("proxyserver").connections.get(flow.client_conn.id)
        if handler is not None:
            handler.close_connection(flow.client_conn)
    except Exception as e:  # pragma: no cover - depends on mitmproxy internals
        logger.warning("failcore: could not close a blocked TCP stream: %s", e)
