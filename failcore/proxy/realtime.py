"""Realtime LLM sessions over a WebSocket, which budgets cannot meter: refused when a token or cost
budget applies.

OpenAI's Realtime API (`wss://api.openai.com/v1/realtime?model=…`), Azure's (`/openai/realtime?
deployment=…`), an OpenAI-compatible server's `/v1/realtime` and Gemini's Live API (`…/
BidiGenerateContent`) generate tokens for messages sent after the upgrade; failcore meters HTTP
exchanges, not WebSocket messages, so a budget of tokens, cost or tool calls would be admitted once and
never charged. Such a session is refused at its upgrade ("cannot meter"), as any request over a hard
budget is; a budget of requests or wall time only still admits it (the upgrade counts as a request).
"""

from __future__ import annotations

import re

import orjson
from mitmproxy import http

from failcore.policy.address import normalise_host
from failcore.policy.decide import request_path
from failcore.policy.model import UNKNOWN_MODEL, BudgetSpec, Decision, Policy

# Limits a realtime session would spend without failcore seeing it.
UNMETERED_METRICS = frozenset({"input_tokens", "output_tokens", "total_tokens", "cost_usd", "tool_calls"})
_REALTIME_PATH = re.compile(r"(?:/realtime|bidigeneratecontent)$", re.IGNORECASE)


def realtime_scope(request: http.Request, host: str) -> tuple[str, str] | None:
    """(provider, model) of a WebSocket upgrade that opens a realtime LLM session, else None. The model
    is the query's `model` (`deployment` on Azure), UNKNOWN_MODEL when it names none."""
    path = request_path(request.path).rstrip("/")
    if not _REALTIME_PATH.search(path):
        return None
    name = normalise_host(host)
    if name == "api.openai.com":
        provider = "openai"
    elif name.endswith((".openai.azure.com", ".cognitiveservices.azure.com")):
        provider = "azure_openai"
    elif name == "generativelanguage.googleapis.com":
        provider = "gemini"
    else:
        provider = "openai_compatible"
    model = request.query.get("model") or request.query.get("deployment")
    return provider, (model[:256] if model else UNKNOWN_MODEL)


def unmeterable_budget(policy: Policy, host: str, provider: str, model: str) -> BudgetSpec | None:
    """The first budget that counts this session and limits what its messages would spend."""
    for spec in policy.budgets:
        if UNMETERED_METRICS.intersection(spec.limits) and spec.scope.matches(
            host=host, provider=provider, model=model
        ):
            return spec
    return None


def unmetered_response(spec: BudgetSpec, decision: Decision, event_id: str) -> http.Response:
    body = orjson.dumps(
        {
            "error": {
                "type": "failcore_budget_unmetered",
                "message": f"failcore refused this realtime session: budget {spec.id!r} limits "
                f"{', '.join(sorted(UNMETERED_METRICS.intersection(spec.limits)))}, which failcore cannot "
                "meter on a WebSocket",
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
    return http.Response.make(403, body, headers)
