"""Held attack: an LLM call spelled so that a routing upstream still serves it but detection did not see
it, so its tokens were never charged: `/V1/Chat/Completions` (Express, ASP.NET Core and Fiber route paths
case-insensitively by default; OpenAI-compatible servers are built on them) and Gemini's
`models/x%3AgenerateContent` (the colon percent-encoded; Google's front end decodes it)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.budget_helpers import CHAT, completion, token_budget
from tests.security.upstream import LoggingUpstream


@pytest.mark.parametrize("path", ["/V1/Chat/Completions", "/v1/CHAT/completions/"])
def test_case_spelled_chat_path_is_charged(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path, path: str
) -> None:
    plain_logging_upstream.respond_with = completion(2000)
    proxy = start_proxy(policy_file(token_budget(3000)))
    with proxied_client(proxy) as client:
        statuses = [
            client.post(f"{plain_logging_upstream.url}{path}", json=CHAT).status_code for _ in range(3)
        ]
    proxy.flush()
    assert statuses == [200, 200, 429]  # 2000, then 4000 >= 3000: the third never leaves
    assert plain_logging_upstream.received_bytes().count(b"POST ") == 2

    events = network_events(read_tape(tmp_path / "tape"))
    assert [(e["decision"], e["rule"]) for e in events][2] == ("BLOCK", "budget:tokens")
    for event in events[:2]:
        assert event["llm"]["api"] == "chat_completions"
        assert event["llm"]["usage"]["total_tokens"] == 2000


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
    with proxied_client(proxy) as client:
        statuses = [client.post(url, json=body).status_code for _ in range(3)]
    proxy.flush()
    assert statuses == [200, 200, 429]
    assert plain_logging_upstream.received_bytes().count(b"POST ") == 2

    events = network_events(read_tape(tmp_path / "tape"))
    assert [(e["decision"], e["rule"]) for e in events][2] == ("BLOCK", "budget:tokens")
    for event in events[:2]:
        assert (event["llm"]["provider"], event["llm"]["api"]) == ("gemini", "gemini_generate")
        assert event["llm"]["request_model"] == "gemini-2.5-flash"
        assert event["llm"]["usage"]["total_tokens"] == 2000
