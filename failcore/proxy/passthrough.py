"""PassedThrough: a tunnel mitmproxy passes through uninspected (`ignore_hosts`, `allow_hosts`) still
reaches the tape.

mitmproxy relays such a connection's bytes with no hook at all (its TCP layer has no flow), so before
this a passed-through tunnel left nothing but the start-up log line that the option is set: an agent
could reach an ignored host as often as it liked and the tape said nothing. Now each one is a
`tcp.passthrough` event when it closes (or when the proxy stops with it open): where it went, when it
opened and closed, the verdict its CONNECT was judged by, and that its content was neither inspected
nor counted. (`show_ignored_hosts=true` makes mitmproxy hand such a tunnel over as raw TCP instead, which
failcore.proxy.tcpstream records and judges byte by byte.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mitmproxy import connection, ctx
from mitmproxy.proxy import layers, server_hooks
from mitmproxy.proxy.layer import NextLayer

from failcore.event import EgressEvent, Target
from failcore.policy.decide import connect_verdict
from failcore.proxy.guard import guarded
from failcore.proxy.session import Session

NOT_COUNTED = "not counted: mitmproxy relays a passed-through tunnel without showing it to addons"


@dataclass(slots=True)
class _Tunnel:
    client: connection.Client
    server: connection.Server
    option: str
    opened: float


def passthrough_event(
    run_id: str, tunnel: _Tunnel, policy: Any, *, still_open: bool = False
) -> dict[str, Any]:
    host, port = _address(tunnel.server)
    verdict = connect_verdict(policy, host=host, port=port) if policy is not None and host else None
    error = tunnel.server.error
    ended = tunnel.server.timestamp_end or time.time()
    return EgressEvent(
        kind="network",
        run=run_id,
        ts_start=tunnel.server.timestamp_start or tunnel.opened,
        ts_end=None if still_open else ended,
        flow=tunnel.server.id,
        action="tcp.passthrough",
        target=Target(host, port, "tcp"),
        path="",
        summary=f"tunnel to {host}:{port} passed through uninspected ({tunnel.option})",
        decision=verdict.decision if verdict is not None else "ALLOW",
        rule=verdict.rule if verdict is not None else None,
        reason=f"{tunnel.option} passes this tunnel through: its content is not inspected by failcore",
        outcome="FAIL" if error else "ok",
        fail_reason="connect_error" if error else None,
        error=str(error)[:1000] if error else None,
        detail={
            "passed_through_by": tunnel.option,
            "inspected": False,
            "bytes": NOT_COUNTED,
            "client": _address(tunnel.client)[0],
            "sni": tunnel.client.sni,
            "open_when_the_proxy_stopped": still_open,
        },
    ).to_dict()


def _address(conn: connection.Connection | None) -> tuple[str, int]:
    # (A server is known by the address it was asked for, a client by its peer's.)
    addr = conn.address if isinstance(conn, connection.Server) else getattr(conn, "peername", None)
    addr = addr or ("", 0)
    return str(addr[0]), int(addr[1])


def _option(options: Any) -> str:
    return "allow_hosts" if getattr(options, "allow_hosts", None) else "ignore_hosts"


class PassedThrough:
    def __init__(self, session: Session) -> None:
        self.session = session
        self._open: dict[str, _Tunnel] = {}  # by server connection id

    @guarded("passthrough.next_layer")
    def next_layer(self, data: NextLayer) -> None:
        layer = data.layer
        # (mitmproxy's own NextLayer addon runs first: an ignored connection gets a TCP layer with no flow.)
        if not isinstance(layer, layers.TCPLayer) or layer.flow is not None:
            return
        server = data.context.server
        self._open[server.id] = _Tunnel(data.context.client, server, _option(ctx.options), time.time())

    @guarded("passthrough.server_disconnected")
    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        tunnel = self._open.pop(data.server.id, None)
        if tunnel is not None:
            self.session.record(passthrough_event(self.session.run_id, tunnel, self.session.policy))

    @guarded("passthrough.client_disconnected")
    def client_disconnected(self, client: connection.Client) -> None:
        # A tunnel whose upstream never connected (refused, unreachable) ends with its client.
        for key, tunnel in list(self._open.items()):
            if tunnel.client.id == client.id and tunnel.server.timestamp_start is None:
                del self._open[key]
                if tunnel.server.error is None:
                    tunnel.server.error = "the upstream connection was never opened"
                self.session.record(passthrough_event(self.session.run_id, tunnel, self.session.policy))

    def done(self) -> None:
        open_tunnels, self._open = self._open, {}
        for tunnel in open_tunnels.values():
            try:
                event = passthrough_event(self.session.run_id, tunnel, self.session.policy, still_open=True)
            except Exception as exc:  # (recorded; the others still are)
                self.session.internal_error(None, "passthrough.done", exc)
                continue
            self.session.record(event)
