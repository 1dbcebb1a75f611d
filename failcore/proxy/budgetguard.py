"""BudgetGuard: hard budgets on requests, tokens, dollars, tool calls and run time.

A request that would start over a hard budget is answered 429 before it leaves the machine. Usage is
counted on the event loop (a request when it is admitted, tokens and cost when its response ends), so
the next request already sees it; the store persists to SQLite off the loop. With `on_exceed:
cut_stream`, a streaming response is cut the moment its usage crosses a hard limit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from mitmproxy import http

from failcore.budget import BudgetBreach, BudgetStore, Usage
from failcore.policy.model import Decision, Policy
from failcore.proxy.cutoff import CutVerdict
from failcore.proxy.guard import guarded
from failcore.proxy.session import FlowState, Session, answer
from failcore.proxy.streamtap import request_streams

STATE_FILE = "budgets.sqlite"


def _describe(b: BudgetBreach) -> str:
    window = "this run" if b.window == "run" else f"the last {b.window}"
    used = f"{b.used:.6g}"
    return f"budget {b.budget!r}: {b.metric} {used} of {b.limit:.6g} in {window}"


def budget_response(breach: BudgetBreach, decision: Decision, event_id: str) -> http.Response:
    body = orjson.dumps(
        {
            "error": {
                "type": "failcore_budget_exceeded",
                "message": f"failcore refused this request: {_describe(breach)} reached",
                "budget": breach.to_json(),
                "rule": decision.rule,
                "event": event_id,
            }
        }
    )
    headers = {
        "Content-Type": "application/json",
        "X-FailCore-Decision": "BLOCK",
        "X-FailCore-Rule": decision.rule or "",
        "X-FailCore-Event": event_id,
    }
    if breach.retry_after is not None:
        headers["Retry-After"] = str(max(1, breach.retry_after))
    return http.Response.make(429, body, headers)


def _warning(b: BudgetBreach) -> dict[str, str]:
    if b.hard:
        return {"reason": "budget_exceeded", "message": f"{_describe(b)}: hard limit reached"}
    return {"reason": "budget_soft", "message": f"{_describe(b)}: past the soft threshold"}


def _host(state: FlowState | None, flow: http.HTTPFlow) -> str:
    return (state.decided_host if state and state.decided_host else flow.request.host).lower()


def _scope(state: FlowState | None) -> tuple[str | None, str | None]:
    if state is None or state.llm is None:
        return None, None
    return state.llm.provider, state.llm.request_model


class BudgetGuard:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.store: BudgetStore | None = None
        self._store_policy: Policy | None = None
        self._started = time.time()

    def running(self) -> None:
        self._started = time.time()
        self._sync_store()

    def done(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def _state_path(self) -> Path:
        settings = self.session.settings
        base = settings.state_dir or os.path.join(settings.confdir, "failcore-state")
        return Path(os.path.expanduser(base)) / STATE_FILE

    def _sync_store(self) -> BudgetStore | None:
        """The store for the active policy's budgets; rebuilt (from the state file) when they change."""
        policy = self.session.policy
        if policy is self._store_policy:
            return self.store
        old_budgets = self._store_policy.budgets if self._store_policy else ()
        self._store_policy = policy
        budgets = policy.budgets if policy else ()
        if budgets == old_budgets and self.store is not None:
            return self.store
        if self.store is not None:
            self.store.close()
        self.store = (
            BudgetStore(self._state_path(), budgets, run_id=self.session.run_id, run_started=self._started)
            if budgets
            else None
        )
        return self.store

    @guarded("budget.requestheaders")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A request whose body will stream is decided now, before anything of it leaves: its budget
        needs only the request line (off LLM paths; on them failcore.proxy.hold keeps the body back)."""
        policy = self.session.policy
        if flow.response is not None or policy is None or policy.mode != "enforce":
            return
        if flow.metadata.get("failcore_held"):
            return
        if not request_streams(flow, self.session.settings, self.session.flows.get(flow.id)):
            return
        self._admit(flow)

    @guarded("budget.request")
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        state = self.session.flows.get(flow.id)
        if state is not None and state.request_reserved_at is not None:
            return  # admitted at requestheaders
        self._admit(flow)

    def _admit(self, flow: http.HTTPFlow) -> None:
        store = self._sync_store()
        if store is None:
            return
        state = self.session.state(flow)
        host = _host(state, flow)
        provider, model = _scope(state)
        enforce = self.session.policy is not None and self.session.policy.mode == "enforce"
        breach, reserved_at, crossings = store.admit(
            host=host, provider=provider, model=model, reserve_over_limit=not enforce
        )
        if breach is not None:
            reason = f"{_describe(breach)} reached"
            decision = Decision(
                "BLOCK" if enforce else "WARN", f"budget:{breach.budget}", reason, True, "BLOCK"
            )
            if enforce or state.decision is None or state.decision.decision != "BLOCK":
                state.decision = decision
            state.warnings.append(_warning(breach))
            if enforce:
                state.blocked = True
                answer(flow, budget_response(breach, decision, flow.id))
                return
        state.request_reserved_at = reserved_at
        for crossed in crossings:
            state.warnings.append(_warning(crossed))

    @guarded("budget.responseheaders")
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        store = self.store
        state = self.session.flows.get(flow.id)
        if store is None or state is None or state.llm is None or state.llm.tracker is None:
            return
        state.cut_guards.append(self._cut_guard(store, state, flow))

    def _cut_guard(
        self, store: BudgetStore, state: FlowState, flow: http.HTTPFlow
    ) -> Callable[[bytes], CutVerdict | None]:
        host = _host(state, flow)
        provider, model = _scope(state)
        assert state.llm is not None and state.llm.tracker is not None
        tracker = state.llm.tracker

        def over_budget(chunk: bytes) -> CutVerdict | None:
            seen = tracker.current
            partial = Usage(
                input_tokens=seen.input_tokens or 0,
                output_tokens=seen.output_tokens or 0,
                total_tokens=seen.total_tokens or (seen.input_tokens or 0) + (seen.output_tokens or 0),
            )
            breach = store.crosses_hard(host=host, provider=provider, model=model, partial=partial)
            if breach is None or self.session.policy is None or self.session.policy.mode != "enforce":
                return None
            state.warnings.append(_warning(breach))
            return CutVerdict("budget", f"{_describe(breach)} crossed mid-stream")

        return over_budget

    @guarded("budget.response")
    def response(self, flow: http.HTTPFlow) -> None:
        self._charge(flow)

    @guarded("budget.error")
    def error(self, flow: http.HTTPFlow) -> None:
        # A stream the client closed, or failcore cut, was billed for what the provider generated.
        self._charge(flow)

    def _charge(self, flow: http.HTTPFlow) -> None:
        store = self.store
        state = self.session.flows.get(flow.id)
        if store is None or state is None:
            return
        if state.blocked:
            # Refused after the budget admitted it (DLP, a held body, …): it never reached the
            # upstream, so it does not count as a request.
            self._release(store, state, flow)
            return
        if state.replay is not None and state.replay.get("mode") in ("replayed", "override"):
            # Answered from a tape: nothing was spent, not even a request.
            self._release(store, state, flow)
            return
        if state.llm is None or state.llm.call is None or state.llm.charged:
            return
        state.llm.charged = True
        call = state.llm.call
        used = Usage(
            input_tokens=call.input_tokens or 0,
            output_tokens=call.output_tokens or 0,
            total_tokens=call.total_tokens or (call.input_tokens or 0) + (call.output_tokens or 0),
            cost_usd=state.llm.charge_usd or 0.0,
            tool_calls=call.tool_calls,
        )
        provider, model = _scope(state)
        for crossed in store.record(host=_host(state, flow), provider=provider, model=model, usage=used):
            state.warnings.append(_warning(crossed))

    @staticmethod
    def _release(store: BudgetStore, state: FlowState, flow: http.HTTPFlow) -> None:
        if state.request_reserved_at is None:
            return
        provider, model = _scope(state)
        store.release_request(
            host=_host(state, flow), provider=provider, model=model, reserved_at=state.request_reserved_at
        )
        state.request_reserved_at = None
