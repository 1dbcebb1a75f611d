"""Held attack: an LLM call spelled so that a routing upstream still serves it but detection did not see
it, so its tokens were never charged: `/v1/chat/completion%73` (an unreserved character percent-encoded:
the same endpoint to the origin server), `/V1/Chat/Completions` (Express, ASP.NET Core and Fiber route
paths case-insensitively by default; OpenAI-compatible servers are built on them) and Gemini's
`models/x%3AgenerateContent` (the colon percent-encoded; Google's front end decodes it)."""

from __future__ import annotations

import json

import pytest

from tests.security.budget_helpers import CHAT, completion, token_budget, two_charged_then_refused
from tests.security.upstream import LoggingUpstream

ENCODED = ["/v1/chat/completion%73", "/v1/chat/%63ompletions", "/v1/x/../chat/completions"]
CASE_SPELLED = ["/V1/Chat/Completions", "/v1/CHAT/completions/"]


@pytest.mark.parametrize("path", ENCODED + CASE_SPELLED)
def test_chat_path_spelling_is_charged(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path, path: str
) -> None:
    plain_logging_upstream.respond_with = completion(2000)
    proxy = start_proxy(policy_file(token_budget(3000)))
    url = f"{plain_logging_upstream.url}{path}"
    for event in two_charged_then_refused(proxy, plain_logging_upstream, tmp_path / "tape", url, CHAT):
        assert event["llm"]["api"] == "chat_completions"


def _gemini_answer(total: int) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
        "usageMetadata": {
            "promptTokenCount": total // 2,
            "candidatesTokenCount": total - total // 2,
            "totalTokenCount": total,
        },
        "modelVersion": "gemini-2.5-flash",
    }
    return 200, [(b"content-type", b"application/json")], json.dumps(body).encode()


@pytest.mark.parametrize("colon", ["%3A", "%3a"])
def test_gemini_encoded_colon_is_charged(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path, colon: str
) -> None:
    plain_logging_upstream.respond_with = _gemini_answer(2000)
    proxy = start_proxy(policy_file(token_budget(3000, "scope: {model: gemini-2.5-flash}")))
    url = f"{plain_logging_upstream.url}/v1beta/models/gemini-2.5-flash{colon}generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    for event in two_charged_then_refused(proxy, plain_logging_upstream, tmp_path / "tape", url, body):
        assert (event["llm"]["provider"], event["llm"]["api"]) == ("gemini", "gemini_generate")
        assert event["llm"]["request_model"] == "gemini-2.5-flash"
