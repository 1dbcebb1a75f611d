"""Cutting a live response stream: when a budget or DLP rule says stop while a response is streaming
to the client, the client must see an abort (a reset stream, a connection closed mid-body) and never a
clean but truncated end, and no upstream byte may reach it after the decision.

Why this touches mitmproxy internals
------------------------------------
mitmproxy (checked against 12.2.3) has no public way to end a flow whose response is already
streaming. `flow.kill()` only sets `flow.error`; the HTTP layer looks at it in `HttpStream.check_killed`,
which runs only after a hook (`send_response` after the `response` hook, i.e. once the upstream has sent
everything). The `stream` callable runs synchronously inside `HttpStream.state_stream_response_body`
and can only return bytes, never commands. So we:

1. replace/flip the stream callable so every further chunk is dropped (public: `Response.stream`);
2. call `flow.kill()` (public), so whichever hook comes next makes mitmproxy send its own
   `ResponseProtocolError(KILL)` to the client instead of the end of the message;
3. on the next event-loop turn (never inside the layer's event handling, which holds the connection
   handler's `_server_event_lock` and must stay synchronous), close a connection through the
   connection handler, exactly like the layer's `CloseConnection` command does. INTERNALS used:
   - `Proxyserver.connections[flow.client_conn.id]` -> `ProxyConnectionHandler`
     (mitmproxy/addons/proxyserver.py, the same lookup `Proxyserver.inject_event` makes);
   - `ConnectionHandler.transports[conn].writer` and `ConnectionHandler.close_connection(conn)`
     (mitmproxy/proxy/server.py).
   Which connection:
   - HTTP/1 client: the client connection. It carries only this exchange (mitmproxy does not
     pipeline); mitmproxy then reports "Client disconnected." to the stream, which closes the upstream
     connection too and fires the `error` hook. A chunked or Content-Length body ends with a FIN mid-body
     (the client's parser reports an incomplete body); a close-delimited body would look complete on
     FIN, so there we set SO_LINGER 0 and the close becomes a TCP RST.
   - HTTP/2 or HTTP/3 client: the upstream connection of this flow. Ending the client connection would
     kill every other stream multiplexed on it. mitmproxy gives an HTTP/1 upstream a connection of its
     own per HTTP/2 request, so closing it ends just this exchange: the HTTP layer turns the truncated
     body into a `ResponseProtocolError` and resets the client's stream (RST_STREAM); a close-delimited
     upstream body ends "cleanly" and the kill from step 2 resets the stream instead. With an HTTP/2
     upstream, other streams of the same client connection to the same server are reset as well.

After a mitmproxy upgrade, check that those three names still exist with those meanings and run
tests/test_cutoff.py, which exercises every path against a real proxy.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.connection import Connection
from mitmproxy.net.http import http1

from failcore.proxy.session import FlowState

logger = logging.getLogger("failcore")

_LINGER_RESET = struct.pack("ii", 1, 0)

# Flows already cut, so repeated calls (a DLP hit after a budget hit, …) do nothing more.
_cut_flows: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()


@dataclass(frozen=True, slots=True)
class CutVerdict:
    """Why a stream must stop. `keep` bytes of the chunk that triggered it are still forwarded
    (e.g. the events before a secret in the same read), the rest of it never is."""

    reason: str  # the tape schema's cut.reason: "budget", "dlp" or "internal_error" (fail_open: false)
    detail: str | None = None
    keep: int = 0


# What a stream callable returns to forward nothing. NOT b"": mitmproxy wraps a bytes result in a list
# and sends it as one ResponseData, and for a chunked HTTP/1 client an empty chunk is the terminating
# "0\r\n\r\n", i.e. exactly the clean end a cut must never produce. An empty iterable sends nothing.
NOTHING: tuple[bytes, ...] = ()


def drop_all(chunk: bytes) -> tuple[bytes, ...]:
    return NOTHING


def cut_client_stream(
    flow: http.HTTPFlow,
    reason: str,
    *,
    detail: str | None = None,
    state: FlowState | None = None,
    at_bytes: int | None = None,
) -> bool:
    """Abort `flow`'s response for the client now. Call on the proxy's event loop: from a stream
    callable or a hook. Returns True when the flow is cut (by this or an earlier call), False when there
    was nothing to cut (the flow is over) or the cut failed; it never raises.

    `state` (failcore's FlowState of the flow) gets `cut = {"reason", "at_bytes", "detail"}`;
    `at_bytes` defaults to the size the flow's response BodyTap has passed to the client."""
    try:
        if flow in _cut_flows:
            return True
        if not flow.live:
            return False
        _cut_flows.add(flow)
        if state is not None:
            state.cut = _cut_record(reason, detail, state, at_bytes)
        response = flow.response
        streaming = response is not None and bool(response.stream)
        if streaming:
            assert response is not None
            if isinstance(response.stream, CuttingTap):
                response.stream.stop(CutVerdict(reason, detail))
            else:
                response.stream = drop_all
        if flow.killable:
            flow.kill()
        if streaming:
            # The response head already went out: mitmproxy will not act on the kill before the upstream
            # finishes, so end the connection ourselves, outside the layer's event handling.
            asyncio.get_running_loop().call_soon(_terminate, flow)
        logger.info(
            "failcore cut the response stream of flow %s to %s (%s)", flow.id, flow.request.host, reason
        )
        return True
    except Exception:
        logger.exception("failcore could not cut the response stream of flow %s", flow.id)
        return False


def _cut_record(reason: str, detail: str | None, state: FlowState, at_bytes: int | None) -> dict[str, Any]:
    if at_bytes is None:
        at_bytes = state.response_tap.size if state.response_tap is not None else 0
    record: dict[str, Any] = {"reason": reason, "at_bytes": at_bytes}
    if detail:
        record["detail"] = detail
    return record


def connection_handler(client: Connection) -> Any:
    """mitmproxy's handler of `client`'s connection (INTERNALS, see above); None once it is gone."""
    return ctx.master.addons.get("proxyserver").connections.get(client.id)


def _terminate(flow: http.HTTPFlow) -> None:
    # HTTP/2 and HTTP/3: this flow's upstream connection (the client's carries other streams).
    _end_connection(flow, upstream=flow.request.is_http2 or flow.request.is_http3)


def close_upstream(flow: http.HTTPFlow) -> None:
    """Closes `flow`'s connection to the upstream: a request stream that must not end there as a whole
    message (mitmproxy sends the message's end, a chunked `0` or END_STREAM, whatever the stream
    callable dropped; the upstream would take a truncated body for the request)."""
    # At once: the message's end may be sent before a graceful close would take effect.
    _end_connection(flow, upstream=True, abort=True)


def _end_connection(flow: http.HTTPFlow, *, upstream: bool, abort: bool = False) -> None:
    """Close `flow`'s upstream or client connection through mitmproxy's handler (INTERNALS, see
    above); never raises. `abort`: its transport is dropped first, at once. A client connection whose
    response is close-delimited is reset (a FIN would end that body cleanly)."""
    which = "upstream" if upstream else "client"
    try:
        handler = connection_handler(flow.client_conn)
        if handler is None:
            return  # the client is already gone, and with it the upstream connection
        connection = flow.server_conn if upstream else flow.client_conn
        if abort:
            io = handler.transports.get(connection)
            if io is not None and io.writer is not None:
                io.writer.transport.abort()
        elif not upstream and _close_delimited(flow):
            _reset_on_close(handler, connection)
        _close(handler, connection)
    except Exception:
        logger.exception("failcore could not close the %s connection of flow %s", which, flow.id)


def _close(handler: Any, connection: Connection) -> None:
    if connection in handler.transports and handler.transports[connection].handler is not None:
        handler.close_connection(connection)


def _close_delimited(flow: http.HTTPFlow) -> bool:
    assert flow.response is not None
    try:
        return http1.expected_http_body_size(flow.request, flow.response) == -1
    except ValueError:
        return True  # malformed framing: a reset is the only unambiguous signal


def _reset_on_close(handler: Any, connection: Connection) -> None:
    io = handler.transports.get(connection)
    sock = io.writer.get_extra_info("socket") if io is not None and io.writer is not None else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


class CuttingTap:
    """A response `stream` callable wrapping another (typically failcore's BodyTap, or None to pass
    bytes through). Before each chunk is forwarded, `should_cut(chunk)` may return a CutVerdict: then
    only `verdict.keep` bytes of that chunk go on, every later chunk is dropped and the client's stream
    is aborted once (cut_client_stream). The wrapped tap sees only what reached the client."""

    def __init__(
        self,
        flow: http.HTTPFlow,
        should_cut: Callable[[bytes], CutVerdict | None],
        inner: Callable[[bytes], bytes] | None = None,
        state: FlowState | None = None,
    ) -> None:
        self.flow = flow
        self.should_cut = should_cut
        self.inner = inner
        self.state = state
        self.verdict: CutVerdict | None = None
        self.forwarded = 0
        self.dropped = 0

    def stop(self, verdict: CutVerdict) -> None:
        """Drop everything from now on (the abort itself is cut_client_stream's job)."""
        if self.verdict is None:
            self.verdict = verdict

    def __call__(self, chunk: bytes) -> bytes | tuple[bytes, ...]:
        if self.verdict is not None:
            self.dropped += len(chunk)
            return NOTHING
        verdict = self.should_cut(chunk)
        if verdict is None:
            return self._forward(chunk)
        self.stop(verdict)
        keep = max(0, min(verdict.keep, len(chunk)))
        forwarded = self._forward(chunk[:keep]) if keep else NOTHING
        self.dropped += len(chunk) - keep
        cut_client_stream(
            self.flow, verdict.reason, detail=verdict.detail, state=self.state, at_bytes=self.forwarded
        )
        return forwarded

    def _forward(self, chunk: bytes) -> bytes | tuple[bytes, ...]:
        out = self.inner(chunk) if self.inner is not None else chunk
        self.forwarded += len(out)
        return out or NOTHING
