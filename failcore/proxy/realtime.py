"""Realtime LLM sessions over a WebSocket: metered message by message, or refused when they cannot be.

OpenAI's Realtime API (`wss://api.openai.com/v1/realtime?model=…`), Azure's (`/openai/realtime?
deployment=…`) and an OpenAI-compatible server's `/v1/realtime` generate tokens for messages sent after
the upgrade. While a token budget applies to such a session (BudgetGuard):

* each `response.done` the server sends is charged its `response.usage`; one without usage (a server that
  does not report it) is charged an estimate that errs high, one token per byte: as input, every message
  of the session so far (the conversation's context); as output, the server's messages since the last
  charge. A session that ends having never reported usage is charged the same for what is left;
* each client message is judged against the session's budgets first: once a token (or wall-time) limit
  is reached it is dropped, so nothing reaches the upstream after the budget is spent (a response already
  being generated finishes, and is charged);
* each response is one request (one generation of the model, as an HTTP LLM call is): a client's
  `response.create` is counted when it is admitted (dropped once a `requests` limit is reached, which
  then drops every client message), a response the server starts by itself (server VAD: a
  `response.created` no `response.create` asked for) when the server announces it.

A session whose cost or tool calls a budget limits cannot be metered (realtime audio is priced apart;
its tool calls are not counted here), nor a Gemini Live session (`…BidiGenerateContent`, or
`…BidiGenerateContentConstrained` with an ephemeral token, whose usage reports failcore does not
read): refused at the upgrade ("cannot meter") when such a budget applies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mitmproxy import http

from failcore.budget import BudgetBreach, BudgetStore, Usage
from failcore.llm.detect import other_readings
from failcore.llm.typed import as_count, as_dict, loads_or_none
from failcore.policy.address import normalise_host
from failcore.policy.decide import request_path
from failcore.policy.model import UNKNOWN_MODEL, BudgetSpec, Decision, Policy
from failcore.proxy.budgetguard import (
    BudgetGuard,
    budget_response,
    describe_breach,
    refusal_response,
    warning_for,
)
from failcore.proxy.gate import is_websocket_upgrade
from failcore.proxy.guard import guarded
from failcore.proxy.session import FlowState, Session, answer

TOKEN_METRICS = frozenset({"input_tokens", "output_tokens", "total_tokens"})
# What a client message is judged on (a `response.create` is also admitted as one request).
MESSAGE_METRICS = TOKEN_METRICS | {"wall_seconds", "requests"}
_REALTIME_PATH = re.compile(r"/realtime$", re.IGNORECASE)
# (`…BidiGenerateContentConstrained`: the endpoint of a session opened with an ephemeral token.)
_GEMINI_LIVE_PATH = re.compile(r"bidigeneratecontent\w*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RealtimeScope:
    provider: str
    model: str
    # Gemini Live: its usage is not read, so no budget of tokens can meter it.
    meterable: bool


def realtime_scope(request: http.Request, host: str) -> RealtimeScope | None:
    """The scope of a WebSocket upgrade that opens a realtime LLM session, else None. The path is read
    as servers route it, as LLM call detection reads it (`/v1%2Frealtime`: uvicorn decodes `%2F`;
    `/v1/realtime;x=1`: Tomcat drops the parameter). The model is the query's `model` (`deployment` on
    Azure); UNKNOWN_MODEL when it names none, or several (servers read the first or the last of them,
    Azure its `deployment` over a `model`): a budget scoped to any model counts the session then."""
    paths = [request_path(request.path), *other_readings(request.path)]
    paths = [path.rstrip("/") for path in paths]
    gemini = any(_GEMINI_LIVE_PATH.search(path) for path in paths)
    if not gemini and not any(_REALTIME_PATH.search(path) for path in paths):
        return None
    name = normalise_host(host)
    if gemini:
        provider = "gemini"
    elif name == "api.openai.com":
        provider = "openai"
    elif name.endswith((".openai.azure.com", ".cognitiveservices.azure.com")):
        provider = "azure_openai"
    else:
        provider = "openai_compatible"
    named = {value for key in ("model", "deployment") for value in request.query.get_all(key) if value}
    model = next(iter(named)) if len({value.lower() for value in named}) == 1 else UNKNOWN_MODEL
    return RealtimeScope(provider, model[:256], not gemini)


def unmeterable_budget(policy: Policy, host: str, scope: RealtimeScope) -> BudgetSpec | None:
    """The first budget that counts this session and limits what failcore cannot meter on it."""
    unmetered = {"cost_usd", "tool_calls"} | (set() if scope.meterable else TOKEN_METRICS)
    for spec in policy.budgets:
        if unmetered.intersection(spec.limits) and spec.scope.matches(
            host=host, provider=scope.provider, model=scope.model
        ):
            return spec
    return None


def metered_budget(policy: Policy, host: str, scope: RealtimeScope) -> bool:
    """Whether a budget of tokens or wall time counts this session (its messages are then judged)."""
    return any(
        MESSAGE_METRICS.intersection(spec.limits)
        and spec.scope.matches(host=host, provider=scope.provider, model=scope.model)
        for spec in policy.budgets
    )


def unmetered_response(spec: BudgetSpec, decision: Decision, event_id: str) -> http.Response:
    limits = ", ".join(sorted(set(spec.limits) - {"requests", "wall_seconds"}))
    error = {
        "type": "failcore_budget_unmetered",
        "message": f"failcore refused this realtime session: budget {spec.id!r} limits {limits}, "
        "which failcore cannot meter on this WebSocket",
    }
    return refusal_response(403, error, decision, event_id)


@dataclass(slots=True)
class RealtimeSession:
    """What one metered session has carried, to charge a response that reports no usage."""

    host: str
    scope: RealtimeScope
    client_bytes: int = 0
    server_charged_bytes: int = 0
    server_pending_bytes: int = 0
    usage_reported: bool = False
    refused: bool = False
    # `response.create` messages counted as requests whose `response.created` has not come yet.
    asked: int = 0

    def client_message(self, content: bytes) -> None:
        self.client_bytes += len(content)

    def started_unasked(self, content: bytes, is_text: bool) -> bool:
        """Whether this server message announces a response no counted `response.create` asked for (one
        the server started by itself, with server VAD): a request to count now."""
        if not _of_type(content, is_text, "response.created"):
            return False
        if self.asked:
            self.asked -= 1
            return False
        return True

    def server_message(self, content: bytes, is_text: bool) -> Usage | None:
        """The usage to charge for this server message (a `response.done`), else None."""
        self.server_pending_bytes += len(content)
        if not is_text or b"response.done" not in content:
            return None
        doc = as_dict(loads_or_none(content))
        if doc.get("type") != "response.done":
            return None
        usage = as_dict(as_dict(doc.get("response")).get("usage"))
        given = as_count(usage.get("input_tokens")), as_count(usage.get("output_tokens"))
        if given[0] is not None and given[1] is not None:
            self.usage_reported = True
            self._settle()
            total = as_count(usage.get("total_tokens"))
            return Usage(
                input_tokens=given[0], output_tokens=given[1], total_tokens=max(total or 0, sum(given))
            )
        return self.estimate()

    def estimate(self) -> Usage | None:
        """One token per byte: every message so far as input, the server's since the last charge as
        output (None when nothing is left to charge)."""
        if self.server_pending_bytes == 0:
            return None
        context = self.client_bytes + self.server_charged_bytes
        output = self.server_pending_bytes
        self._settle()
        return Usage(input_tokens=context, output_tokens=output, total_tokens=context + output)

    def _settle(self) -> None:
        self.server_charged_bytes += self.server_pending_bytes
        self.server_pending_bytes = 0


class RealtimeBudget:
    """Budgets on realtime WebSocket sessions (see the module docstring); the store is BudgetGuard's.
    Runs before BudgetGuard, so a refused upgrade is not counted as a request."""

    def __init__(self, session: Session, budgets: BudgetGuard) -> None:
        self.session = session
        self.budgets = budgets
        self._sessions: dict[str, RealtimeSession] = {}

    def _enforce(self) -> bool:
        return self.session.policy is not None and self.session.policy.mode == "enforce"

    def idle_hooks(self) -> frozenset[str]:
        """`request` does nothing without a budget in the policy (failcore.proxy.dispatch); the
        WebSocket hooks are kept (they follow a session admitted before a reload)."""
        policy = self.session.policy
        return frozenset({"request"}) if policy is None or not policy.budgets else frozenset()

    @guarded("realtime.request")
    def request(self, flow: http.HTTPFlow) -> None:
        policy = self.session.policy
        if flow.response is not None or policy is None or not policy.budgets:
            return
        if not is_websocket_upgrade(flow.request):
            return
        state = self.session.state(flow)
        host = (state.decided_host or flow.request.host).lower()
        scope = realtime_scope(flow.request, host)
        if scope is None:
            return
        spec = unmeterable_budget(policy, host, scope)
        if spec is not None:
            reason = f"budget {spec.id!r}: a realtime session's usage cannot be metered"
            self._refuse(
                flow, state, f"budget:{spec.id}", reason, {"reason": "budget_exceeded", "message": reason}
            )
            if self._enforce():
                answer(flow, unmetered_response(spec, state.decision or _block(spec.id, reason), flow.id))
            return
        store = self.budgets.current_store()
        breach = self._spent(store, host, scope)
        if breach is not None:
            self._refuse_breach(flow, state, breach)
            if self._enforce():
                assert state.decision is not None
                answer(flow, budget_response(breach, state.decision, flow.id))

    def _refuse(
        self, flow: http.HTTPFlow, state: FlowState, rule: str, reason: str, warning: dict[str, str]
    ) -> None:
        enforce = self._enforce()
        decision = Decision("BLOCK" if enforce else "WARN", rule, reason, True, "BLOCK")
        if enforce or state.decision is None or state.decision.decision != "BLOCK":
            state.decision = decision
        state.warnings.append(warning)
        if enforce:
            state.blocked = True

    def _refuse_breach(self, flow: http.HTTPFlow, state: FlowState, breach: BudgetBreach) -> None:
        reason = f"{describe_breach(breach)} reached"
        self._refuse(flow, state, f"budget:{breach.budget}", reason, warning_for(breach))

    @staticmethod
    def _spent(store: BudgetStore | None, host: str, scope: RealtimeScope) -> BudgetBreach | None:
        if store is None:
            return None
        return store.check_metrics(
            host=host, provider=scope.provider, model=scope.model, metrics=MESSAGE_METRICS
        )

    @guarded("realtime.websocket_start")
    def websocket_start(self, flow: http.HTTPFlow) -> None:
        policy = self.session.policy
        state = self.session.flows.get(flow.id)
        if policy is None or not policy.budgets or (state is not None and state.blocked):
            return
        host = ((state.decided_host if state else None) or flow.request.host).lower()
        scope = realtime_scope(flow.request, host)
        if scope is not None and scope.meterable and metered_budget(policy, host, scope):
            self._sessions[flow.id] = RealtimeSession(host, scope)

    @guarded("realtime.websocket_message")
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        meter = self._sessions.get(flow.id)
        store = self.budgets.store
        if meter is None or store is None or flow.websocket is None or not flow.websocket.messages:
            return
        message = flow.websocket.messages[-1]
        if not message.from_client:
            if meter.started_unasked(message.content, message.is_text):
                self._charge(store, flow, meter, Usage(requests=1))
            usage = meter.server_message(message.content, message.is_text)
            if usage is not None:
                self._charge(store, flow, meter, usage)
            return
        if _of_type(message.content, message.is_text, "response.create"):
            breach = self._admit(store, flow, meter)
        else:
            breach = self._spent(store, meter.host, meter.scope)
        if breach is not None and not meter.refused:
            meter.refused = True
            state = self.session.state(flow)
            self._refuse_breach(flow, state, breach)
        if breach is not None and self._enforce():
            message.drop()  # nothing more reaches the upstream: no new response can be asked for
            return
        meter.client_message(message.content)

    @guarded("realtime.websocket_end")
    def websocket_end(self, flow: http.HTTPFlow) -> None:
        meter = self._sessions.pop(flow.id, None)
        store = self.budgets.store
        if meter is None or store is None or meter.usage_reported:
            return
        usage = meter.estimate()
        if usage is not None:
            self._charge(store, flow, meter, usage)

    def _admit(self, store: BudgetStore, flow: http.HTTPFlow, meter: RealtimeSession) -> BudgetBreach | None:
        """A `response.create`: judged and counted as one request at once (as BudgetGuard admits an HTTP
        call), so a burst of them cannot all pass before the first is counted. The limit it breaks."""
        scope = meter.scope
        over = not self._enforce()  # (observe mode lets it go and counts it)
        breach, reserved_at, crossed = store.admit(
            host=meter.host, provider=scope.provider, model=scope.model, reserve_over_limit=over
        )
        if reserved_at is not None:
            meter.asked += 1
            state = self.session.flows.get(flow.id)
            if state is not None:
                state.warnings.extend(warning_for(crossing) for crossing in crossed)
        return breach

    def _charge(self, store: BudgetStore, flow: http.HTTPFlow, meter: RealtimeSession, usage: Usage) -> None:
        crossed = store.record(
            host=meter.host, provider=meter.scope.provider, model=meter.scope.model, usage=usage
        )
        state = self.session.flows.get(flow.id)
        if state is not None:
            state.warnings.extend(warning_for(breach) for breach in crossed)


def _of_type(content: bytes, is_text: bool, kind: str) -> bool:
    """Whether a message is the JSON event `kind` (its `type`, as the server's JSON parser reads it: a
    `\\u` escape may spell it)."""
    if not is_text or (kind.encode() not in content and b"\\u" not in content):
        return False
    return as_dict(loads_or_none(content)).get("type") == kind


def _block(budget: str, reason: str) -> Decision:
    return Decision("BLOCK", budget, reason, True, "BLOCK")
