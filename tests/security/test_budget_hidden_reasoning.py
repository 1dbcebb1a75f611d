"""Held attack: streaming a reasoning model's answer without `stream_options.include_usage`, so that the
budget's estimate counts only the visible answer while the model spent (and the provider billed) hidden
reasoning tokens.

The answer is a real one: openllmetry's recorded gpt-5-nano call (tests/data/conformance), a one-line joke
whose usage says most of its completion tokens were reasoning. Here the upstream streams that text without
usage, as OpenAI does when `include_usage` is not set. The call is charged its cap on generated tokens
(which covers reasoning), or failcore's documented ceiling when it sets none: at least what the recorded
call was billed, and the next call is refused."""

from __future__ import annotations

import json

import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.llm_replay import load_exchanges
from tests.security.budget_helpers import stream_without_usage, token_budget
from tests.security.upstream import LoggingUpstream

POLICY = token_budget(800, metric="output_tokens")


def _recorded_reasoning_answer() -> tuple[str, int, int]:
    """(answer text, completion tokens billed, of which reasoning) of the recorded gpt-5-nano call."""
    for exchange in load_exchanges():
        if exchange["path"] != "/v1/chat/completions" or "gpt-5-nano" not in exchange["request_body"]:
            continue
        response = json.loads(exchange["response_body"])
        usage = response.get("usage") or {}
        reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
        if reasoning > 500:
            text = response["choices"][0]["message"]["content"]
            return text, usage["completion_tokens"], reasoning
    raise AssertionError("no recorded gpt-5-nano answer with reasoning")


@pytest.mark.parametrize("cap", [2000, None])
def test_hidden_reasoning_is_charged(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path, cap: int | None
) -> None:
    text, billed, _ = _recorded_reasoning_answer()
    assert len(text) + 4 < 800 < billed  # visible text alone would leave the budget open
    plain_logging_upstream.respond_with = stream_without_usage(text, step=20, model="gpt-5-nano-2025-08-07")
    proxy = start_proxy(policy_file(POLICY))
    url = f"{plain_logging_upstream.url}/v1/chat/completions"
    body: dict = {"model": "gpt-5-nano", "stream": True, "messages": [{"role": "user", "content": "joke"}]}
    if cap is not None:
        body["max_completion_tokens"] = cap
    with proxied_client(proxy) as client:
        first = client.post(url, json=body)
        second = client.post(url, json=body)
    proxy.flush()
    assert first.status_code == 200 and text[:20] in first.text
    assert second.status_code == 429
    assert plain_logging_upstream.received_bytes().count(b"POST /v1/chat/completions") == 1

    allowed, refused = network_events(read_tape(tmp_path / "tape"))
    assert allowed["llm"]["usage"]["known"] is False
    estimate = allowed["llm"]["budget_estimate"]
    assert estimate["output_tokens"] >= billed  # what OpenAI billed the recorded call, reasoning included
    assert estimate["output_tokens"] == (cap if cap is not None else 128_000)
    assert (refused["decision"], refused["rule"]) == ("BLOCK", "budget:tokens")
