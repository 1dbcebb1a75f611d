"""BudgetGuard: hard budgets on requests, tokens, dollars, tool calls and run time.

A request that would start over a hard budget is answered 429 before it leaves the machine. Usage is
counted on the event loop (a request when it is admitted, tokens and cost when its response ends), so
the next request already sees it; the store persists to SQLite off the loop. With `on_exceed:
cut_stream`, a streaming response is cut the moment its usage crosses a hard limit.

A call whose usage the provider did not report is charged an estimate that errs high, and a Responses
API response fetched again (`background: true`, then `GET /v1/responses/{id}`) is charged once: see
failcore.budgetcharge.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from mitmproxy import http

from failcore.budget import BudgetBreach, BudgetStore, Usage
from failcore.budgetcharge import (
    ChargedResponses,
    Estimate,
    batch_estimate,
    estimate_usage,
    hides_reasoning,
    reports_usage,
)
from failcore.evidence import is_encoded
from failcore.llm import LlmCall, PriceTable, compute_cost, load_price_table
from failcore.llm.detect import response_retrieval_id
from failcore.llm.prices import priced_by_genai
from failcore.policy.address import normalise_host
from failcore.policy.model import UNKNOWN_MODEL, Decision, Policy
from failcore.proxy.cutoff import CutVerdict
from failcore.proxy.guard import guarded
from failcore.proxy.session import FlowState, Session, answer
from failcore.proxy.streamcopy import message_encoding
from failcore.proxy.streamtap import request_streams

if TYPE_CHECKING:
    from failcore.proxy.meter import LlmFlow

STATE_FILE = "budgets.sqlite"


def describe_breach(b: BudgetBreach) -> str:
    window = "this run" if b.window == "run" else f"the last {b.window}"
    used = f"{b.used:.6g}"
    return f"budget {b.budget!r}: {b.metric} {used} of {b.limit:.6g} in {window}"


def refusal_response(
    status: int, error: dict[str, object], decision: Decision, event_id: str, retry_after: int | None = None
) -> http.Response:
    """failcore's answer to a request a budget refuses: `error` (its type and message, and what else the
    caller says) with the rule and event as JSON, the decision in X-FailCore-* headers."""
    body = orjson.dumps({"error": {**error, "rule": decision.rule, "event": event_id}})
    headers = {
        "Content-Type": "application/json",
        "X-FailCore-Decision": "BLOCK",
        "X-FailCore-Rule": decision.rule or "",
        "X-FailCore-Event": event_id,
    }
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, retry_after))
    return http.Response.make(status, body, headers)


def budget_response(breach: BudgetBreach, decision: Decision, event_id: str) -> http.Response:
    error = {
        "type": "failcore_budget_exceeded",
        "message": f"failcore refused this request: {describe_breach(breach)} reached",
        "budget": breach.to_json(),
    }
    return refusal_response(429, error, decision, event_id, breach.retry_after)


def warning_for(b: BudgetBreach) -> dict[str, str]:
    if b.hard:
        return {"reason": "budget_exceeded", "message": f"{describe_breach(b)}: hard limit reached"}
    return {"reason": "budget_soft", "message": f"{describe_breach(b)}: past the soft threshold"}


def _host(state: FlowState | None, flow: http.HTTPFlow) -> str:
    return (state.decided_host if state and state.decided_host else flow.request.host).lower()


def _scope(state: FlowState | None) -> tuple[str | None, str | None]:
    if state is None or state.llm is None:
        return None, None
    if state.llm.request_model is None and state.llm.model_unknown:
        return state.llm.provider, UNKNOWN_MODEL
    return state.llm.provider, state.llm.request_model


def _request_bytes(flow: http.HTTPFlow, state: FlowState, llm: LlmFlow) -> int:
    """The size of the request body the upstream received, decoded (a gzip'd request is not cheaper): one
    failcore could not read as JSON by its decoded size as the meter weighed it (a coding it does not
    undo: its wire size); a streamed one's by the bytes that passed its tap at least."""
    if is_encoded(message_encoding(flow.request)) and llm.request_json is not None:
        return len(orjson.dumps(llm.request_json))
    streamed = state.request_tap.size if state.request_tap is not None else 0
    return max(len(flow.request.raw_content or b""), streamed, llm.request_size or 0)


def _stream_chars(llm: LlmFlow) -> int:
    """Characters of generated text a metered stream carried: the tracker's count, and every wire byte
    of the part whose codings could not be undone (a coding failcore does not decode, a corrupt one)."""
    assert llm.tracker is not None
    return llm.tracker.generated_chars + (llm.inflater.undecoded if llm.inflater is not None else 0)


def _output_chars(flow: http.HTTPFlow, state: FlowState, call: LlmCall) -> int:
    """Characters of generated text the response carried. An answer failcore cannot read counts a
    character per byte: a Bedrock answer (AWS's binary event stream), one whose codings failcore could
    not undo, a JSON answer too large to meter whole; each by its size decoded (as the meter weighed it,
    bounded: a gzip'd answer is not smaller), its wire size where it does not decode."""
    llm = state.llm
    assert llm is not None
    if llm.api.startswith("bedrock_") and not call.usage_known:
        streamed = state.response_tap.size if state.response_tap is not None else 0
        size = max(streamed, len(flow.response.raw_content or b"") if flow.response is not None else 0)
        return max(size, llm.response_size or 0, len(call.output_text or ""))
    if llm.tracker is not None:
        return _stream_chars(llm)
    if llm.whole_copy is not None and llm.whole_copy.overflow and state.response_tap is not None:
        return max(state.response_tap.size, llm.whole_copy.size)
    chars = len(call.output_text or "") + sum(len(raw) for raw in call.tool_inputs)
    return max(chars, llm.response_size or 0) if llm.response_unread else chars


def _output_words(state: FlowState, call: LlmCall) -> int:
    """Words of the generated text (a lower bound on its tokens; see failcore.budgetcharge)."""
    assert state.llm is not None
    if state.llm.tracker is not None:
        return state.llm.tracker.generated_words
    return len((call.output_text or "").split())


def _estimate_evidence(estimate: Estimate, cost_usd: float | None) -> dict[str, object]:
    return {
        "input_tokens": estimate.input_tokens,
        "output_tokens": estimate.output_tokens,
        "total_tokens": estimate.total_tokens,
        "cost_usd": cost_usd,
        "basis": "request_bytes+output_chars",
    }


_EXCHANGE_HOOKS = frozenset({"requestheaders", "request", "responseheaders", "response", "error"})


class BudgetGuard:
    def __init__(self, session: Session, prices: Callable[[], PriceTable] | None = None) -> None:
        self.session = session
        self.store: BudgetStore | None = None
        self._store_policy: Policy | None = None
        self._started = time.time()
        # The meter's price table (with the policy's `prices:`), to price an estimate.
        self._prices = prices
        self._own_prices: PriceTable | None = None
        self._charged_responses = ChargedResponses()

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

    def current_store(self) -> BudgetStore | None:
        """The store of the active policy's budgets (failcore.proxy.realtime charges it too)."""
        return self._sync_store()

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

    def idle_hooks(self) -> frozenset[str]:
        """Every per-exchange hook, while the policy has no budget and no store is left from one that
        had (failcore.proxy.dispatch): then `_admit` finds no store, and the rest have none to use. A
        store is only made by `_sync_store`, for a policy with budgets."""
        policy = self.session.policy
        if self.store is None and (policy is None or not policy.budgets):
            return _EXCHANGE_HOOKS
        return frozenset()

    @guarded("budget.requestheaders")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A request whose body will stream is decided now, before anything of it leaves: its budget
        needs only the request line (off LLM paths; on them failcore.proxy.hold keeps the body back)."""
        policy = self.session.policy
        if flow.response is not None or policy is None or policy.mode != "enforce":
            return
        if flow.metadata.get("failcore_held"):
            return
        state = self.session.flows.get(flow.id)
        if state is not None and state.blocked:
            return  # refused already (failcore.proxy.hold)
        # `stream is True`: mitmproxy's `stream_large_bodies` streams it (failcore.proxy.hold).
        streams = flow.request.stream is True
        if not streams and not request_streams(flow, self.session.settings, state):
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
            reason = f"{describe_breach(breach)} reached"
            decision = Decision(
                "BLOCK" if enforce else "WARN", f"budget:{breach.budget}", reason, True, "BLOCK"
            )
            if enforce or state.decision is None or state.decision.decision != "BLOCK":
                state.decision = decision
            state.warnings.append(warning_for(breach))
            if enforce:
                state.blocked = True
                if flow.request.stream is True:
                    flow.kill()  # streamed by mitmproxy: no answer can be sent, nothing may leave
                else:
                    answer(flow, budget_response(breach, decision, flow.id))
                return
        state.request_reserved_at = reserved_at
        for crossed in crossings:
            state.warnings.append(warning_for(crossed))

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
        llm = state.llm
        # A stream that will not report its usage is measured by its estimate as it goes.
        request_bytes = None if reports_usage(llm.api, llm.request_json) else _request_bytes(flow, state, llm)

        def over_budget(chunk: bytes) -> CutVerdict | None:
            seen = tracker.current
            if seen.usage_known or request_bytes is None:
                partial = Usage(
                    input_tokens=seen.input_tokens or 0,
                    output_tokens=seen.output_tokens or 0,
                    total_tokens=seen.total_tokens or (seen.input_tokens or 0) + (seen.output_tokens or 0),
                )
            else:  # no usage (yet): the estimate a finished call would be charged
                guess = estimate_usage(
                    request_bytes=request_bytes,
                    output_chars=_stream_chars(llm),
                    output_words=tracker.generated_words,
                    request_json=llm.request_json,
                    tool_calls=tracker.tool_calls,
                    reported_input=seen.input_tokens,
                    reported_output=seen.output_tokens,
                )
                partial = Usage(
                    input_tokens=guess.input_tokens,
                    output_tokens=guess.output_tokens,
                    total_tokens=guess.total_tokens,
                )
            breach = store.crosses_hard(host=host, provider=provider, model=model, partial=partial)
            if breach is None or self.session.policy is None or self.session.policy.mode != "enforce":
                return None
            state.warnings.append(warning_for(breach))
            return CutVerdict("budget", f"{describe_breach(breach)} crossed mid-stream")

        return over_budget

    @guarded("budget.response")
    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return self._charge(flow)

    @guarded("budget.error")
    def error(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        # A stream the client closed, or failcore cut, was billed for what the provider generated.
        return self._charge(flow)

    def _charge(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        store = self.store
        state = self.session.flows.get(flow.id)
        if store is None or state is None:
            return None
        if state.blocked:
            # Refused after the budget admitted it (DLP, a held body, …): it never reached the
            # upstream, so it does not count as a request.
            self._release(store, state, flow)
            return None
        if state.replay is not None and state.replay.get("mode") in ("replayed", "override"):
            # Answered from a tape: nothing was spent, not even a request.
            self._release(store, state, flow)
            return None
        if state.llm is None or state.llm.call is None or state.llm.charged:
            return None
        state.llm.charged = True
        call = state.llm.call
        used = Usage(
            input_tokens=call.input_tokens or 0,
            output_tokens=call.output_tokens or 0,
            total_tokens=call.total_tokens or (call.input_tokens or 0) + (call.output_tokens or 0),
            cost_usd=state.llm.charge_usd or 0.0,
            tool_calls=call.tool_calls,
        )
        retrieved = response_retrieval_id(flow.request.path)
        if call.usage_known or retrieved is not None or not 200 <= (call.status or 0) < 300:
            # A fetched response without usage (still queued) has generated nothing yet; a refused call
            # (4xx, 5xx) was not billed.
            self._record(store, state, flow, call, used, retrieved)
            return None
        if state.llm.api == "message_batches":
            estimate = batch_estimate(
                request_bytes=_request_bytes(flow, state, state.llm), request_json=state.llm.request_json
            )
        else:
            estimate = _estimate(flow, state, call)
        guess = replace(
            call,
            input_tokens=estimate.input_tokens,
            output_tokens=estimate.output_tokens,
            total_tokens=estimate.total_tokens,
            cached_input_tokens=None,
            cache_write_tokens=None,
            cache_write_1h_tokens=None,
            reasoning_tokens=None,
            usage_known=True,
        )
        prices = self._price_table()
        if priced_by_genai(guess, prices):
            return self._charge_estimate_off_loop(store, state, flow, call, used, estimate, guess, prices)
        self._charge_estimate(store, state, flow, call, used, estimate, _estimate_cost(guess, prices))
        return None

    async def _charge_estimate_off_loop(
        self,
        store: BudgetStore,
        state: FlowState,
        flow: http.HTTPFlow,
        call: LlmCall,
        used: Usage,
        estimate: Estimate,
        guess: LlmCall,
        prices: PriceTable,
    ) -> None:
        # genai-prices takes ~1 ms of CPU per call (see LlmMeter._price_off_loop).
        cost = await asyncio.to_thread(_estimate_cost, guess, prices)
        self._charge_estimate(store, state, flow, call, used, estimate, cost)

    def _charge_estimate(
        self,
        store: BudgetStore,
        state: FlowState,
        flow: http.HTTPFlow,
        call: LlmCall,
        used: Usage,
        estimate: Estimate,
        cost: float | None,
    ) -> None:
        charged = Usage(
            input_tokens=estimate.input_tokens,
            output_tokens=estimate.output_tokens,
            total_tokens=estimate.total_tokens,
            cost_usd=max(cost or 0.0, used.cost_usd),
            tool_calls=used.tool_calls,
        )
        assert state.llm is not None
        if state.llm.evidence is not None:
            state.llm.evidence["budget_estimate"] = _estimate_evidence(estimate, cost)
        hint = (
            " (set stream_options.include_usage for the exact count)"
            if call.api in ("chat_completions", "completions") and call.stream
            else ""
        )
        if hides_reasoning(state.llm.request_json, state.llm.request_model):
            hint = " (a reasoning model's hidden tokens: its cap on output is charged" + (
                "; " + hint[2:] if hint else ")"
            )
        price = f", ${cost:.6g}" if cost is not None else ""
        state.warnings.append(
            {
                "reason": "usage_estimated",
                "message": f"no token usage reported: budgets charged an estimate of "
                f"{estimate.input_tokens} input + {estimate.output_tokens} output tokens{price} "
                f"(request bytes, output characters: an upper bound){hint}",
            }
        )
        self._record(store, state, flow, call, charged, None)

    def _record(
        self,
        store: BudgetStore,
        state: FlowState,
        flow: http.HTTPFlow,
        call: LlmCall,
        used: Usage,
        retrieved: str | None,
    ) -> None:
        host = _host(state, flow)
        response_id = retrieved or call.response_id
        if response_id is not None:
            used = self._charged_responses.settle((normalise_host(host), response_id), used)
        provider, model = _scope(state)
        # A fetched response's request names no model (or one failcore could not read): it is charged
        # as the model that answered, if the answer says.
        if model is None or (model == UNKNOWN_MODEL and call.response_model):
            model = call.response_model
        for crossed in store.record(host=host, provider=provider, model=model, usage=used):
            state.warnings.append(warning_for(crossed))

    def _price_table(self) -> PriceTable:
        if self._prices is not None:
            return self._prices()
        if self._own_prices is None:  # alone (tests): the shipped table
            self._own_prices = load_price_table()
        return self._own_prices

    @staticmethod
    def _release(store: BudgetStore, state: FlowState, flow: http.HTTPFlow) -> None:
        if state.request_reserved_at is None:
            return
        provider, model = _scope(state)
        store.release_request(
            host=_host(state, flow), provider=provider, model=model, reserved_at=state.request_reserved_at
        )
        state.request_reserved_at = None


def _estimate(flow: http.HTTPFlow, state: FlowState, call: LlmCall) -> Estimate:
    """The estimate of a finished call that reported no usage (failcore.budgetcharge.estimate_usage)."""
    llm = state.llm
    assert llm is not None
    return estimate_usage(
        request_bytes=_request_bytes(flow, state, llm),
        output_chars=_output_chars(flow, state, call),
        output_words=_output_words(state, call),
        request_json=llm.request_json,
        tool_calls=call.tool_calls,
        reported_input=call.input_tokens,
        reported_output=call.output_tokens,
        hidden_reasoning=hides_reasoning(llm.request_json, llm.request_model),
    )


def _estimate_cost(guess: LlmCall, prices: PriceTable) -> float | None:
    return compute_cost(guess, prices).usd
