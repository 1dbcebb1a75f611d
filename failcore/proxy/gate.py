"""PolicyGate: decides ALLOW / WARN / BLOCK for every request and CONNECT, and keeps the policy fresh."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import time
from collections.abc import Awaitable
from pathlib import Path

import orjson
from mitmproxy import connection, exceptions, http, tls

from failcore.dlp.pending import wait_until_built
from failcore.dlp.scanner import DlpScanner, build_failed
from failcore.event import EgressEvent
from failcore.paths import load_or_create_salt
from failcore.policy.address import normalise_host
from failcore.policy.decide import (
    connect_verdict,
    decide,
    override_methods,
    stricter,
)
from failcore.policy.load import load_policy, with_mode
from failcore.policy.model import Decision, Policy, PolicyError
from failcore.proxy.failclosed import withhold_sni
from failcore.proxy.guard import guarded
from failcore.proxy.overrides import OverrideBody, methods_in_body, names_a_method, override_body
from failcore.proxy.session import FlowState, Fronted, Session, answer, answered_by_failcore
from failcore.proxy.streamtap import header_of
from failcore.runmarks import policy_detail
from failcore.shipped import default_policy_path, resolve_policy

logger = logging.getLogger("failcore")


@functools.lru_cache(maxsize=1024)
def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def decision_host(flow: http.HTTPFlow) -> str:
    """The host mitmproxy really talks to, as a name where one is known.

    In regular mode that is the CONNECT target or the absolute URL's host. In transparent and
    local-capture modes `request.host` is the original destination IP; the TLS SNI is the name
    upstream certificate verification checks, so it may stand for the IP. The Host header may not:
    a client chooses it freely (see `claimed_host`).
    """
    host = flow.request.host
    if _is_ip_literal(host) and flow.client_conn.sni:
        return flow.client_conn.sni
    return host


_H2_H3 = (b"HTTP/2.0", b"HTTP/3")


def claimed_host(flow: http.HTTPFlow, host: str | None = None) -> str | None:
    """The Host header's name when it differs from where the request really goes (`host`, the
    flow's `decision_host`, when the caller has it already)."""
    req = flow.request
    # `host_header` (an HTTP/1 request's Host) read straight from the fields: the same value, without
    # the headers mapping's layers of calls that made it a third of the gate's work on each request.
    header = req.host_header if req.data.http_version in _H2_H3 else header_of(req.data.headers, b"host")
    if not header:
        return None
    name = header.rsplit(":", 1)[0] if not header.endswith("]") else header
    name = name.strip("[]").lower().rstrip(".")
    if host is None:
        host = decision_host(flow)
    return name if name and name != host.lower().rstrip(".") else None


def is_websocket_upgrade(req: http.Request) -> bool:
    return req.method == "GET" and "websocket" in req.headers.get("upgrade", "").lower()


def judge_request(policy: Policy, host: str, req: http.Request) -> Decision:
    """A request's verdict; a WebSocket upgrade is judged as the ws/wss connection it opens.

    A BLOCK rule that matches the upgrade as the plain http(s) GET it also is still applies, so a
    path rule written for https cannot be sidestepped by asking for an upgrade.
    """
    method, scheme, port, path = req.method, req.scheme, req.port, req.path
    decision = decide(policy, host=host, port=port, scheme=scheme, method=method, path=path)
    for override in override_methods(req.headers.fields, path):
        # X-HTTP-Method-Override and friends: judged as both methods, the stricter verdict wins.
        decision = stricter(
            decision, decide(policy, host=host, port=port, scheme=scheme, method=override, path=path)
        )
    if method != "GET" or not is_websocket_upgrade(req):
        return decision
    ws_scheme = "wss" if scheme == "https" else "ws"
    ws = decide(policy, host=host, port=port, scheme=ws_scheme, method=method, path=path)
    if decision.rule is not None and decision.matched_action == "BLOCK":
        return stricter(ws, decision)
    return ws


# Modes where the client names its destination (CONNECT, SOCKS) before TLS starts.
TUNNEL_MODES = ("regular", "upstream", "socks5")

# How long an edited policy file must stay unchanged before it is read (see reload_if_changed).
RELOAD_SETTLE_SECONDS = 0.05
# A reload whose DLP rules could not be compiled (memory, a damaged library, …) is tried again after
# this many seconds, doubling up to the maximum while it keeps failing; an edit is read at once.
RELOAD_RETRY_SECONDS = 2.0
RELOAD_RETRY_MAX_SECONDS = 300.0


def blocked_response(decision: Decision, event_id: str, status: int = 403) -> http.Response:
    body = orjson.dumps(
        {
            "error": {
                "type": "failcore_blocked",
                "rule": decision.rule,
                "reason": decision.reason,
                "event": event_id,
                "message": "failcore blocked this request by policy",
            }
        }
    )
    headers = {
        "Content-Type": "application/json",
        "X-FailCore-Decision": "BLOCK",
        "X-FailCore-Event": event_id,
    }
    if decision.rule:
        headers["X-FailCore-Rule"] = header_text(decision.rule)
    if decision.reason:
        headers["X-FailCore-Reason"] = header_text(decision.reason)
    response = http.Response.make(status, body, headers)
    # Clients that print only the status line (curl's "CONNECT tunnel failed", Python's "Tunnel
    # connection failed: 403 …") still say who refused and by which rule.
    response.reason = header_text(
        f"Blocked by failcore (rule {decision.rule})" if decision.rule else "Blocked by failcore"
    )
    return response


def header_text(text: str, limit: int = 200) -> str:
    """Text fit for a header or status line: printable ASCII on one line, at most `limit` characters."""
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "~"


class PolicyGate:
    """Loads the YAML policy (refusing to start on an invalid one), reloads it when the file changes
    (keeping the last good policy on a bad edit) and answers blocked requests itself."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.path: Path | None = None
        self.mode_override: str | None = None
        self._stamp: tuple[int, ...] | None = None
        self._reload_failed = False
        # When the file whose DLP rules failed to compile is read again (monotonic), and the next delay.
        self._retry_at: float | None = None
        self._retry_delay = RELOAD_RETRY_SECONDS
        self._watcher: asyncio.Task[None] | None = None

    def configure(self, updated: set[str]) -> None:
        # The values were checked by failcore.proxy.settings.Settings, which FailCore configures first.
        if updated & {"failcore_policy", "failcore_mode"}:
            self._load_configured_policy()

    def _load_configured_policy(self) -> None:
        settings = self.session.settings
        path = resolve_policy(settings.policy or default_policy_path())
        self.mode_override = settings.mode or None
        try:
            policy = with_mode(load_policy(path), self.mode_override)
        except PolicyError as e:
            raise exceptions.OptionsError(f"invalid failcore policy:\n{e}") from None
        self.path = path
        self._stamp = self._file_stamp()
        if not self.session.salt:
            self.session.salt = load_or_create_salt(Path(os.path.expanduser(settings.confdir)))
        self._activate(policy, DlpScanner.for_policy(policy, self.session.salt))
        self._record_policy_event("policy.load", policy, [])

    def _activate(self, policy: Policy, dlp: DlpScanner | None) -> None:
        self.session.policy = policy
        self.session.dlp = dlp

    def running(self) -> None:
        if self.session.policy is None:
            # Embedders that add this addon without touching failcore options never trigger
            # `configure` for them; the default policy must apply all the same.
            self._load_configured_policy()
        if self.session.settings.policy_poll_ms > 0 and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def done(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    def _file_stamp(self) -> tuple[int, ...] | None:
        """What tells an edit: an editor's rename gives a new inode, an edit within one mtime tick
        still moves the change time or the size."""
        try:
            st = os.stat(self.path) if self.path else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino) if st else None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep((self.session.settings.policy_poll_ms or 1000) / 1000)
            try:
                await self.reload_if_changed()
            except Exception as e:
                self.session.internal_error(None, "policy reload", e)

    async def reload_if_changed(self) -> bool:
        stamp = self._file_stamp()
        if stamp is None or self.path is None:
            return False
        if stamp == self._stamp:
            if (
                self._retry_at is None
                and self.session.dlp is not None
                and build_failed(self.session.dlp.engine)
            ):
                # The rules in force failed to compile in the background (at start-up): every DLP use
                # is an internal error until a rebuild works, which is tried like a failed reload's.
                self._retry_at = time.monotonic() + self._retry_delay
                self._retry_delay = min(self._retry_delay * 2, RELOAD_RETRY_MAX_SECONDS)
            if self._retry_at is None or time.monotonic() < self._retry_at:
                return False
            # The same file again: its DLP rules failed to compile last time.
        else:
            # An edit caught mid-write (editors and `write_text` truncate, then write) would be read as
            # an empty or half policy and reported invalid: the file must hold still for a moment first.
            await asyncio.sleep(RELOAD_SETTLE_SECONDS)
            if self._file_stamp() != stamp:
                return False  # still being written: a later poll reads it
            self._retry_delay = RELOAD_RETRY_SECONDS
        self._stamp = stamp
        self._retry_at = None
        try:
            # Parsing may import a gitleaks file and compiling DLP rules takes a while: off the loop,
            # while traffic keeps using the current policy.
            policy = await asyncio.to_thread(lambda: with_mode(load_policy(self.path), self.mode_override))
        except PolicyError as e:
            logger.warning("failcore: policy %s is invalid; keeping the last good policy:\n%s", self.path, e)
            self._record_policy_event("policy.reload", self.session.policy, [str(p) for p in e.problems])
            self._reload_failed = True
            return False
        try:
            # Built here, in full (the current rules serve meanwhile: no interim engine is needed).
            dlp = await asyncio.to_thread(DlpScanner.for_policy, policy, self.session.salt, background=False)
            if dlp is not None:  # (an engine of these rules still compiling since an earlier load)
                await asyncio.to_thread(wait_until_built, dlp.engine)
        except Exception as e:
            self._dlp_build_failed(e)
            return False
        self._activate(policy, dlp)
        # After a warning about a bad edit, the fix must be as visible as the warning was.
        log = logger.warning if self._reload_failed else logger.info
        log("failcore: reloaded policy %s (mode %s)%s", self.path, policy.mode,
            ": valid again, now in force" if self._reload_failed else "")  # fmt: skip
        self._reload_failed = False
        self._retry_delay = RELOAD_RETRY_SECONDS
        self._record_policy_event("policy.reload", policy, [])
        return True

    def _dlp_build_failed(self, error: Exception) -> None:
        """The edited policy is valid but its DLP rules could not be compiled: the last good policy keeps
        deciding, the failure goes to the log and the tape, and the same file is tried again later."""
        delay = self._retry_delay
        self._retry_at = time.monotonic() + delay
        self._retry_delay = min(delay * 2, RELOAD_RETRY_MAX_SECONDS)
        cause = error.__cause__ or error  # (a background build's error comes wrapped)
        why = f"{type(cause).__name__}: {cause}"
        problem = f"the DLP rules could not be compiled ({why}); retry in {delay:.0f} s"
        logger.warning("failcore: policy %s: %s; keeping the last good policy", self.path, problem)
        self._record_policy_event("policy.reload", self.session.policy, [problem])
        self._reload_failed = True

    def _record_policy_event(self, action: str, policy: Policy | None, problems: list[str]) -> None:
        detail = policy_detail(action, self.path, policy, problems)
        event = EgressEvent(kind="policy", run=self.session.run_id, ts_start=time.time(), detail=detail)
        self.session.record(event.to_dict())

    @guarded("gate.requestheaders")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        policy = self.session.policy
        if policy is None or flow.response is not None:
            return
        req = flow.request
        host = decision_host(flow)
        state = self.session.state(flow)
        state.decided_host = host
        decision = judge_request(policy, host, req)
        claimed = claimed_host(flow, host)
        if claimed is not None:
            # A Host header naming another host must not buy a laxer verdict than the real target.
            decision = stricter(decision, judge_request(policy, claimed, req))
        fronted = self.session.fronted.get(flow.client_conn.id)
        if fronted is not None:
            decision = stricter(decision, fronted.decision)
            if fronted.warning is not None:
                state.warnings.append(fronted.warning)
        state.decision = decision

    @guarded("gate.request")
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response is not None:
            return None
        state = self.session.flows.get(flow.id)
        if state is None or state.decision is None:
            return None
        policy = self.session.policy
        if policy is not None and state.decided_host is not None and names_a_method(policy):
            # Without a rule naming methods another method reads the same: the body is not parsed.
            body = override_body(flow.request)
            if body is not None and body.decodes_off_loop():
                return self._overrides_off_loop(flow, state, policy, body)
            self._judge_overrides(flow, state, policy, [] if body is None else methods_in_body(body, policy))
        self._refuse_if_blocked(flow, state)
        return None

    async def _overrides_off_loop(
        self, flow: http.HTTPFlow, state: FlowState, policy: Policy, body: OverrideBody
    ) -> None:
        """A transfer-coded body that may inflate to megabytes is inflated and read in a worker thread."""
        self._judge_overrides(flow, state, policy, await asyncio.to_thread(methods_in_body, body, policy))
        self._refuse_if_blocked(flow, state)

    def _judge_overrides(
        self, flow: http.HTTPFlow, state: FlowState, policy: Policy, methods: list[str]
    ) -> None:
        req = flow.request
        assert state.decision is not None and state.decided_host is not None
        for override in methods:
            # The body is here now (buffered, or held): a `_method` field in it is judged too.
            state.decision = stricter(
                state.decision,
                decide(
                    policy,
                    host=state.decided_host,
                    port=req.port,
                    scheme=req.scheme,
                    method=override,
                    path=req.path,
                ),
            )

    def _refuse_if_blocked(self, flow: http.HTTPFlow, state: FlowState) -> None:
        assert state.decision is not None
        if state.decision.decision != "BLOCK":
            return
        state.blocked = True
        answer(flow, blocked_response(state.decision, flow.id))

    @guarded("gate.response")
    def response(self, flow: http.HTTPFlow) -> None:
        """A refused HTTP/2 or HTTP/3 request keeps its pseudo-headers on the tape.

        mitmproxy holds `:authority` and friends outside `request.headers`, so the recorded headers of
        a blocked request lacked the very name it was refused for. They are put back in front of the
        headers only for a request failcore answered itself (it never leaves): known by the mark failcore
        puts on its own answers, not by an `X-FailCore-Decision` header, which an upstream can send too."""
        req = flow.request
        if not req.http_version.startswith(("HTTP/2", "HTTP/3")) or flow.response is None:
            return
        if not answered_by_failcore(flow) or ":authority" in req.headers:
            return
        pseudo = (
            (":method", req.method),
            (":scheme", req.scheme),
            (":authority", req.authority),
            (":path", req.path),
        )
        for i, (name, value) in enumerate(p for p in pseudo if p[1]):
            req.headers.insert(i, name, value)

    @guarded("gate.tls_clienthello")
    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """SNI fronting: a ClientHello naming another host than the one the tunnel was opened to.

        The SNI is judged as a CONNECT to it would be. When that is a BLOCK, the upstream handshake
        names the tunnel's host instead (the blocked name never leaves), and every request on the
        connection is refused with the SNI's verdict; the tape names both hosts."""
        policy = self.session.policy
        server = data.context.server
        sni = data.client_hello.sni
        if (
            policy is None
            or not sni
            or server.address is None
            or data.context.client.proxy_mode.type_name not in TUNNEL_MODES
        ):
            return
        target, port = str(server.address[0]), int(server.address[1])
        if normalise_host(sni) == normalise_host(target):
            return
        verdict = connect_verdict(policy, host=sni, port=port)
        warning = {
            "reason": "sni_mismatch",
            "message": f"TLS SNI {sni!r} is not the CONNECT host {target!r} "
            f"(SNI verdict {verdict.matched_action}{f', rule {verdict.rule}' if verdict.rule else ''})",
        }
        if verdict.decision != "BLOCK":
            self.session.fronted[data.context.client.id] = Fronted(verdict, warning, blocked=False)
            return
        withhold_sni(server)  # (the address is the tunnel's host: `target`)
        reason = f"TLS SNI {sni!r} differs from the CONNECT host {target!r} and is blocked: {verdict.reason}"
        decision = Decision("BLOCK", verdict.rule, reason, True, "BLOCK")
        self.session.fronted[data.context.client.id] = Fronted(decision, warning, blocked=True)
        logger.warning("failcore: blocked SNI fronting: CONNECT %s, SNI %s", target, sni)

    def client_disconnected(self, client: connection.Client) -> None:
        self.session.fronted.pop(client.id, None)

    @guarded("gate.http_connect")
    def http_connect(self, flow: http.HTTPFlow) -> None:
        policy = self.session.policy
        if policy is None or flow.response is not None:
            return
        verdict = connect_verdict(policy, host=flow.request.host, port=flow.request.port)
        if verdict.decision != "BLOCK":
            return
        state = self.session.state(flow)
        state.decision = verdict
        state.decided_host = flow.request.host
        state.blocked = True
        answer(flow, blocked_response(verdict, flow.id))
