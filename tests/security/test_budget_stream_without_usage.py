"""Held attack: streaming a chat completion without `stream_options.include_usage` so that the provider
reports no usage, and a token budget would be charged nothing.

The upstream answers with a real OpenAI stream recorded without usage (openllmetry's cassettes,
tests/data/conformance). The first call is charged an estimate (request bytes + generated characters,
recorded as `llm.budget_estimate`), which exhausts the budget: the second never leaves."""

from __future__ import annotations

import json

import httpx

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.budget_helpers import recorded_streams_without_usage, token_budget
from tests.security.upstream import LoggingUpstream

LIMIT = 100
POLICY = token_budget(LIMIT)


def _recorded_stream_without_usage() -> dict:
    for _request, exchange in recorded_streams_without_usage():
        return exchange
    raise AssertionError("no recorded OpenAI stream without usage")


def _generated_chars(sse: str) -> tuple[int, int]:
    """Characters of content, refusals, tool-call names and arguments in the stream's `data:` chunks,
    and the number of tool calls (the test's own reading of the recorded stream)."""
    total, calls = 0, set()
    for line in sse.splitlines():
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            continue
        for choice in json.loads(line[5:]).get("choices") or []:
            delta = choice.get("delta") or {}
            total += len(delta.get("content") or "") + len(delta.get("refusal") or "")
            for call in delta.get("tool_calls") or []:
                calls.add((choice.get("index"), call.get("index")))
                function = call.get("function") or {}
                total += len(function.get("name") or "") + len(function.get("arguments") or "")
    return total, len(calls)


def test_stream_without_usage_is_charged_an_estimate(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    exchange = _recorded_stream_without_usage()
    request_body = exchange["request_body"].encode()
    assert len(request_body) > LIMIT  # the estimate of the first call alone exhausts the budget
    plain_logging_upstream.respond_with = (
        200,
        [(b"content-type", b"text/event-stream")],
        exchange["response_body"].encode(),
    )
    proxy = start_proxy(policy_file(POLICY))
    url = f"{plain_logging_upstream.url}/v1/chat/completions"
    headers = {"content-type": "application/json"}
    with proxied_client(proxy) as client:
        first = client.post(url, content=request_body, headers=headers)
        second = client.post(url, content=request_body, headers=headers)
    proxy.flush()
    assert first.status_code == 200 and b"data:" in first.content
    assert second.status_code == 429
    assert second.json()["error"]["budget"]["id"] == "tokens"
    assert plain_logging_upstream.received_bytes().count(b"POST /v1/chat/completions") == 1

    allowed, refused = network_events(read_tape(tmp_path / "tape"))
    llm = allowed["llm"]
    assert llm["usage"]["known"] is False and llm["usage"]["total_tokens"] is None  # never a silent 0
    estimate = llm["budget_estimate"]
    assert estimate["input_tokens"] == len(request_body)
    chars, tool_calls = _generated_chars(exchange["response_body"])
    assert "max_tokens" not in json.loads(request_body)  # else the estimate is capped by it
    # The documented rule: a token per character, 4 for the answer and 4 for each tool call.
    assert estimate["output_tokens"] == chars + 4 * (1 + tool_calls)
    assert estimate["total_tokens"] == estimate["input_tokens"] + estimate["output_tokens"]
    assert estimate["cost_usd"] is not None and estimate["cost_usd"] > 0
    assert "usage_estimated" in [w["reason"] for w in allowed["warnings"]]
    assert (refused["decision"], refused["rule"]) == ("BLOCK", "budget:tokens")


def test_cut_stream_cuts_a_stream_without_usage_at_its_estimate(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """With `on_exceed: cut_stream` the estimate is what crosses the limit mid-stream: the client gets a
    broken stream, never the whole answer."""
    exchange = _recorded_stream_without_usage()
    assert _generated_chars(exchange["response_body"])[0] > 10
    plain_logging_upstream.respond_with = (
        200,
        [(b"content-type", b"text/event-stream")],
        exchange["response_body"].encode(),
    )
    policy = POLICY.replace(f"{{total_tokens: {LIMIT}}}", "{output_tokens: 10}\n    on_exceed: cut_stream")
    proxy = start_proxy(policy_file(policy))
    received = bytearray()
    with proxied_client(proxy) as client:
        try:
            with client.stream(
                "POST",
                f"{plain_logging_upstream.url}/v1/chat/completions",
                content=exchange["request_body"].encode(),
                headers={"content-type": "application/json"},
            ) as response:
                for chunk in response.iter_bytes():
                    received += chunk
        except httpx.HTTPError:
            pass
    proxy.flush()
    assert b"[DONE]" not in received
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert event["cut"]["reason"] == "budget"
