"""ResolvedAddressGuard: `network.block_private_resolved: true` refuses names that resolve inward.

Name rules cannot see that `metadata.attacker.example` resolves to 169.254.169.254. With the option on,
every request and CONNECT target is resolved before it is decided, and one with any non-global address
(private, loopback, link-local and so cloud metadata, CGNAT, reserved) is blocked like a BLOCK rule
would (rule `network.block_private_resolved`). mitmproxy resolves the name again when it connects, so
a DNS answer that changes in between (rebinding) is caught at `server_connected`: the peer actually
connected to is checked before a byte is sent, and the connection is dropped if it is not global.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable

from mitmproxy import http
from mitmproxy.proxy import server_hooks

from failcore.policy.address import canonical_ip, is_non_global
from failcore.policy.model import Decision, Policy
from failcore.proxy.failclosed import abort_server_connection
from failcore.proxy.gate import blocked_response, decision_host, stricter
from failcore.proxy.guard import guarded
from failcore.proxy.session import Session, answer

logger = logging.getLogger("failcore")

RULE = "network.block_private_resolved"


async def inward_address(host: str, port: int) -> str | None:
    """The first non-global address `host` resolves to, or None (a name that does not resolve is
    left to fail as it would)."""
    literal = canonical_ip(host)
    if literal is not None:
        return literal if is_non_global(literal) else None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    for info in infos:
        address = str(info[4][0])
        if is_non_global(address):
            return address
    return None


def inward_decision(policy: Policy, host: str, address: str) -> Decision:
    reason = f"{host} resolves to {address}, which is not a public address (network.block_private_resolved)"
    if policy.mode == "observe":
        return Decision("WARN", RULE, reason, True, "BLOCK")
    return Decision("BLOCK", RULE, reason, True, "BLOCK")


_HOOKS = frozenset({"requestheaders", "http_connect", "server_connected"})


class ResolvedAddressGuard:
    def __init__(self, session: Session) -> None:
        self.session = session

    def _active(self) -> Policy | None:
        policy = self.session.policy
        return policy if policy is not None and policy.block_private_resolved else None

    def idle_hooks(self) -> frozenset[str]:
        """Every hook, without `network.block_private_resolved` (failcore.proxy.dispatch)."""
        return frozenset() if self._active() else _HOOKS

    @guarded("resolved.requestheaders")
    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        policy = self._active()
        if policy is None or flow.response is not None:
            return None
        state = self.session.flows.get(flow.id)
        if state is None or (state.decision is not None and state.decision.decision == "BLOCK"):
            return None
        return self._judge(policy, flow, decision_host(flow), flow.request.port)

    async def _judge(self, policy: Policy, flow: http.HTTPFlow, host: str, port: int) -> None:
        address = await inward_address(host, port)
        if address is None:
            return
        state = self.session.state(flow)
        verdict = inward_decision(policy, host, address)
        state.decision = verdict if state.decision is None else stricter(state.decision, verdict)

    @guarded("resolved.http_connect")
    def http_connect(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        policy = self._active()
        if policy is None or flow.response is not None:
            return None
        return self._judge_connect(policy, flow)

    async def _judge_connect(self, policy: Policy, flow: http.HTTPFlow) -> None:
        host, port = flow.request.host, flow.request.port
        address = await inward_address(host, port)
        if address is None:
            return
        verdict = inward_decision(policy, host, address)
        if verdict.decision != "BLOCK":
            return
        state = self.session.state(flow)
        state.decision = verdict
        state.decided_host = host
        state.blocked = True
        answer(flow, blocked_response(verdict, flow.id))

    @guarded("resolved.server_connected")
    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        policy = self._active()
        server = data.server
        if policy is None or policy.mode != "enforce" or server.via is not None or not server.peername:
            return
        peer = str(server.peername[0])
        if not is_non_global(peer):
            return
        # The name resolved to a public address when it was decided and to this one now (rebinding).
        logger.warning("failcore: dropped a connection to %s: %s is not public", server.address, peer)
        server.error = f"failcore: {server.address[0]} connected to {peer}, which is not a public address"
        abort_server_connection(data)
