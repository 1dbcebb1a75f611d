"""`fail_open: false`: when a failcore hook fails, what it was deciding is refused.

failcore.proxy.guard records the failure (an `internal_error` event), then calls `refuse` with the
hook's name and its argument. What is refused depends on what the hook decides:
- an HTTP request (`requestheaders`, `request`, `http_connect`): answered 502 `FAIL_CLOSED` by failcore,
  never forwarded;
- a response (`responseheaders`): the flow is killed before any of its body is read, so nothing
  unchecked reaches the client (a 502 put in its place would carry the upstream's body);
- a whole response (`response`, read in full): answered 502 `FAIL_CLOSED` instead; a response that
  streamed has already been sent and is left as it was (the tape keeps what the client got);
- a WebSocket message (`websocket_message`): dropped;
- a TCP stream (`tcp_start`, `tcp_message`): closed, and nothing more of it relayed;
- a DNS question: answered SERVFAIL;
- a server connection (`server_connect`: not opened; `server_connected`: dropped before a byte is sent);
- a TLS ClientHello (`tls_clienthello`): its SNI is not offered to the upstream and every request on
  the connection is refused (the SNI was never checked).
What only reports (`error`, `tcp_end`, `websocket_end`, …) has nothing left to refuse.
A check inside a body's stream callable (no hook: mitmproxy calls it) is failcore.proxy.guard.StreamFailures'.
"""

from __future__ import annotations

import logging

import orjson
from mitmproxy import connection, dns, http, tcp, tls
from mitmproxy import flow as mflow
from mitmproxy.net.dns import response_codes
from mitmproxy.proxy import server_hooks

from failcore.policy.model import Decision
from failcore.proxy.cutoff import connection_handler
from failcore.proxy.session import Fronted, Session, answer

logger = logging.getLogger("failcore")


def refuse(session: Session, hook: str, subject: object, where: str, message: str) -> None:
    """Refuse what `hook` (called with `subject`) was deciding. Never raises."""
    try:
        _refuse(session, hook, subject, where, message)
    except Exception:  # pragma: no cover - the failure is already on the tape
        logger.exception("failcore could not fail closed after a failure in %s", where)


# Set on a TCP flow whose check failed under `fail_open: false`: nothing more of it is relayed.
REFUSED = "failcore_refused"
REQUEST_HOOKS = frozenset({"requestheaders", "request", "http_connect"})


def _refuse(session: Session, hook: str, subject: object, where: str, message: str) -> None:
    said = f"failcore failed in {where} and the policy says fail_open: false"
    if isinstance(subject, http.HTTPFlow):
        _refuse_http(subject, hook, where, message)
    elif isinstance(subject, tcp.TCPFlow):
        if hook in ("tcp_start", "tcp_message"):
            subject.metadata[REFUSED] = True
            if subject.messages:
                subject.messages[-1].content = b""
            if subject.server_conn.timestamp_start is None:
                subject.server_conn.error = f"{said}: the connection was not opened"
            close_client(subject)
    elif isinstance(subject, dns.DNSFlow):
        if subject.live and subject.response is None:
            subject.response = subject.request.fail(response_codes.SERVFAIL)
    elif isinstance(subject, server_hooks.ServerConnectionHookData):
        if hook == "server_connect":
            subject.server.error = f"{said}: the connection was not opened"
        elif hook == "server_connected":
            subject.server.error = f"{said}: the connection was dropped"
            abort_server_connection(subject)
    elif isinstance(subject, tls.ClientHelloData):
        withhold_sni(subject.context.server)
        decision = Decision("BLOCK", "internal_error", said, True, "BLOCK")
        session.fronted[subject.context.client.id] = Fronted(decision, None, blocked=True)


def _refuse_http(flow: http.HTTPFlow, hook: str, where: str, message: str) -> None:
    if hook == "websocket_message":
        if flow.websocket is not None and flow.websocket.messages:
            flow.websocket.messages[-1].drop()
    elif hook == "responseheaders":
        if flow.killable:
            flow.kill()
    elif hook == "response":
        if flow.live and flow.response is not None and not flow.response.stream:
            answer(flow, fail_closed_response(where, message, flow.id, forwarded=True))
    elif hook in REQUEST_HOOKS and flow.live:
        answer(flow, fail_closed_response(where, message, flow.id))


def fail_closed_response(
    where: str, message: str, event_id: str, *, forwarded: bool = False
) -> http.Response:
    """`forwarded`: the request had reached the upstream (its response is what failcore withheld)."""
    withheld = "the upstream's response was withheld" if forwarded else "the request was not forwarded"
    body = orjson.dumps(
        {
            "error": {
                "type": "failcore_internal_error",
                "message": "failcore failed while handling this request and the policy says "
                f"fail_open: false, so {withheld}",
                "where": where,
                "detail": message,
                "event": event_id,
            }
        }
    )
    return http.Response.make(
        502, body, {"Content-Type": "application/json", "X-FailCore-Decision": "FAIL_CLOSED"}
    )


def withhold_sni(server: connection.Server) -> str:
    """The upstream handshake names the connection's own target (a tunnel's or reverse proxy's host),
    not the SNI the client offered; an address is sent as no name at all. Returns the name sent."""
    # Never None: mitmproxy would then offer the client's SNI after all.
    server.sni = str(server.address[0]) if server.address is not None else ""
    return server.sni


def close_client(flow: mflow.Flow) -> None:
    """Close the client connection (and with it a TCP stream) from inside a hook.

    mitmproxy's `flow.kill()` does not stop a TCP flow; its connection handler can close a connection.
    Should that fail, tcp_message still relays nothing for a blocked stream."""
    try:
        handler = connection_handler(flow.client_conn)
        if handler is not None:
            handler.close_connection(flow.client_conn)
    except Exception as e:  # pragma: no cover - depends on mitmproxy internals
        logger.warning("failcore: could not close a blocked TCP stream: %s", e)


def abort_server_connection(data: server_hooks.ServerConnectionHookData) -> None:
    """Close a just-connected server socket before mitmproxy hands the connection to its layers:
    nothing is sent on it."""
    handler = connection_handler(data.client)
    io = handler.transports.get(data.server) if handler is not None else None
    if io is not None and io.writer is not None:
        io.writer.transport.abort()
