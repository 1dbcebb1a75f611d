"""FlowVerdict: failcore's verdict where mitmproxy and mitmweb show a flow.

Each HTTP flow gets a line in its comment — decision, rule and reason, tokens and cost — and a marker
when failcore blocked it (🚫) or let through what a BLOCK rule matched (⚠), so a mitmweb user sees what
failcore decided without opening the tape. What is only known once evidence is built off the loop (DLP
hits that did not decide anything) is on the tape, not here.
"""

from __future__ import annotations

from mitmproxy import http

from failcore.proxy.guard import guarded
from failcore.proxy.session import FlowState, Session
from failcore.views import fmt

BLOCKED_MARK = ":no_entry_sign:"
WOULD_BLOCK_MARK = ":warning:"


def verdict_comment(state: FlowState) -> str:
    """One line, e.g. `failcore: BLOCK no-admin (admin endpoints)` or `failcore: ALLOW · 1,200/30
    tokens · $0.000198 (gpt-4o-mini-2024-07-18)`."""
    decision = state.decision
    parts = [f"failcore: {decision.decision if decision else 'ALLOW'}"]
    if decision is not None and decision.rule:
        parts[0] += f" {decision.rule}" + (f" ({decision.reason})" if decision.reason else "")
    llm = state.llm
    if llm is not None and llm.call is not None:
        call = llm.call
        parts.append(f"{fmt.tokens(call.input_tokens or 0, call.output_tokens or 0)} tokens")
        usd = llm.cost.usd if llm.cost is not None else None
        model = call.response_model or call.request_model
        parts.append(("$?" if usd is None else fmt.usd(usd)) + (f" ({model})" if model else ""))
    return " · ".join(parts)


class FlowVerdict:
    def __init__(self, session: Session) -> None:
        self.session = session

    @guarded("verdict.response")
    def response(self, flow: http.HTTPFlow) -> None:
        self._annotate(flow)

    @guarded("verdict.error")
    def error(self, flow: http.HTTPFlow) -> None:
        self._annotate(flow)

    def _annotate(self, flow: http.HTTPFlow) -> None:
        state = self.session.flows.get(flow.id)
        if state is None:
            return
        line = verdict_comment(state)
        flow.comment = f"{flow.comment}\n{line}" if flow.comment else line
        if state.blocked:
            flow.marked = BLOCKED_MARK
        elif state.decision is not None and state.decision.would_block:
            flow.marked = WOULD_BLOCK_MARK
