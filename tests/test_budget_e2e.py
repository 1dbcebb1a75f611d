"""Budgets through the real proxy: 429 with the budget named, windows that survive restarts, cut_stream."""

from __future__ import annotations

import ssl

import anthropic
import httpx
import httpx2
import openai
import orjson
import pytest

from tests.helpers import network_events, proxied_client, read_tape

RUN_REQUESTS = """\
mode: enforce
budgets:
  - id: three-requests
    window: run
    limits: {requests: 3}
"""

MINUTE_TOKENS = """\
mode: enforce
budgets:
  - id: tokens-per-minute
    window: minute
    scope: {model: "gpt-4o*"}
    limits: {total_tokens: 50}
    soft: 0.5
"""


def test_nth_request_over_a_run_budget_gets_429(start_proxy, policy_file, upstream, tmp_path):
    proxy = start_proxy(policy_file(RUN_REQUESTS), sets=[f"failcore_state_dir={tmp_path / 'state'}"])
    with proxied_client(proxy) as client:
        statuses = [client.get(upstream.url + "/json").status_code for _ in range(3)]
        before = len(upstream.requests)
        refused = client.get(upstream.url + "/json")
    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    assert len(upstream.requests) == before, "an over-budget request never leaves the machine"
    error = refused.json()["error"]
    assert error["type"] == "failcore_budget_exceeded"
    assert error["budget"]["id"] == "three-requests"
    assert (error["budget"]["metric"], error["budget"]["limit"], error["budget"]["used"]) == (
        "requests",
        3,
        3,
    )
    assert error["budget"]["window"] == "run" and error["budget"]["resets_at"] is None
    assert "Retry-After" not in refused.headers  # a run budget does not reset by waiting
    proxy.stop()
    events = network_events(read_tape(tmp_path / "tape"))
    assert [e["outcome"] for e in events] == ["ok", "ok", "ok", "BLOCKED"]
    assert events[-1]["rule"] == "budget:three-requests" and events[-1]["status"] == 429


def _openai(proxy, upstream):  # type: ignore[no-untyped-def]
    trust = ssl.create_default_context(cafile=str(proxy.ca_cert))
    http = httpx.Client(proxy=proxy.url, verify=trust)
    return http, openai.OpenAI(base_url=upstream.url + "/v1", api_key="sk-x", http_client=http, max_retries=0)


def test_window_budget_counts_tokens_warns_then_blocks_and_survives_restart(
    start_proxy, policy_file, upstream, tmp_path
):
    policy = policy_file(MINUTE_TOKENS)
    state = [f"failcore_state_dir={tmp_path / 'state'}"]
    proxy = start_proxy(policy, sets=state)
    http, client = _openai(proxy, upstream)
    ask = {"messages": [{"role": "user", "content": "hi"}]}
    client.chat.completions.create(model="gpt-4o-mini", **ask)  # 26 tokens: past the soft 25
    client.chat.completions.create(model="gpt-4o-mini", **ask)  # 52 tokens: at the hard limit
    client.chat.completions.create(model="o3-mini", **ask)  # out of scope: not limited
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o", **ask)
    http.close()
    response = refused.value.response
    assert response.status_code == 429
    budget = response.json()["error"]["budget"]
    assert (budget["id"], budget["metric"], budget["limit"], budget["used"]) == (
        "tokens-per-minute",
        "total_tokens",
        50,
        52,
    )
    assert 1 <= int(response.headers["Retry-After"]) <= 61
    assert budget["resets_at"].endswith("Z")
    proxy.stop()
    events = network_events(read_tape(tmp_path / "tape"))
    warnings = [[w["reason"] for w in e["warnings"]] for e in events]
    assert warnings[0] == ["budget_soft"]
    assert warnings[1] == ["budget_exceeded"]
    assert warnings[2] == []
    assert events[3]["outcome"] == "BLOCKED" and events[3]["rule"] == "budget:tokens-per-minute"

    # A new proxy (a new run) on the same state: the minute's usage is still there.
    again = start_proxy(policy, sets=state, tape=tmp_path / "tape2")
    http, client = _openai(again, upstream)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini", **ask)
    http.close()


def test_observe_mode_only_warns_over_budget(start_proxy, policy_file, upstream, tmp_path):
    policy = policy_file(RUN_REQUESTS.replace("mode: enforce", "mode: observe"))
    proxy = start_proxy(policy, sets=[f"failcore_state_dir={tmp_path / 'state'}"])
    with proxied_client(proxy) as client:
        statuses = [client.get(upstream.url + "/json").status_code for _ in range(4)]
    assert statuses == [200] * 4
    proxy.stop()
    last = network_events(read_tape(tmp_path / "tape"))[-1]
    assert (last["decision"], last["would_block"], last["rule"]) == ("WARN", True, "budget:three-requests")


def test_cut_stream_aborts_an_sse_response_when_usage_crosses_the_limit(
    start_proxy, policy_file, upstream, tmp_path
):
    policy = policy_file(
        "mode: enforce\nbudgets:\n  - id: short-answers\n    window: run\n"
        "    limits: {output_tokens: 10}\n    on_exceed: cut_stream\n"
    )
    proxy = start_proxy(policy, sets=[f"failcore_state_dir={tmp_path / 'state'}"])
    trust = ssl.create_default_context(cafile=str(proxy.ca_cert))
    received: list[str] = []
    with httpx2.Client(proxy=proxy.url, verify=trust) as http:
        client = anthropic.Anthropic(
            base_url=upstream.url, api_key="sk-ant-x", http_client=http, max_retries=0
        )
        headers = {
            "x-standin-usage": orjson.dumps({"input": 20, "output": 30}).decode(),
            "x-standin-gap": "0.05",
        }
        errors = (anthropic.APIConnectionError, httpx2.RemoteProtocolError, httpx2.ReadError)
        with (
            pytest.raises(errors),
            client.messages.stream(
                model="claude-sonnet-4-5",
                max_tokens=100,
                messages=[{"role": "user", "content": "tell me a long story please"}],
                extra_headers=headers,
            ) as stream,
        ):
            for event in stream:
                received.append(event.type)
        # The tokens generated up to the cut count: the next request is already over the budget.
        with pytest.raises(anthropic.RateLimitError):
            client.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=100,
                messages=[{"role": "user", "content": "and another"}],
                extra_headers=headers,
            )
    assert "message_stop" not in received, "the client must see an abort, not a clean end"
    assert "content_block_delta" in received
    proxy.stop()
    [event, refused] = [
        e for e in network_events(read_tape(tmp_path / "tape")) if e["summary"] == "POST /v1/messages"
    ]
    assert refused["status"] == 429 and refused["rule"] == "budget:short-answers"
    assert event["outcome"] == "BLOCKED"
    assert event["cut"]["reason"] == "budget" and "short-answers" in event["cut"]["detail"]
    assert "event: message_stop" not in event["response"]["body"]["text"]
    assert any(w["reason"] == "budget_exceeded" for w in event["warnings"])


def test_a_stream_the_client_closes_at_its_final_event_counts_toward_the_budget(
    start_proxy, policy_file, upstream, tmp_path
):
    """The OpenAI SDK hangs up at `[DONE]`; if that races the end of the HTTP message the call must
    still be counted, or an agent could spend past its budget (linger makes the race certain)."""
    policy = policy_file(
        "mode: enforce\nbudgets:\n  - id: run-tokens\n    window: run\n    limits: {total_tokens: 1000}\n"
    )
    proxy = start_proxy(policy, sets=[f"failcore_state_dir={tmp_path / 'state'}"])
    http, client = _openai(proxy, upstream)
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    list(
        client.chat.completions.create(
            **ask,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-standin-usage": '{"input": 700, "output": 400}', "x-standin-linger": "1.0"},
        )
    )
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(**ask)
    http.close()
    budget = refused.value.response.json()["error"]["budget"]
    assert (budget["id"], budget["metric"], budget["used"]) == ("run-tokens", "total_tokens", 1100)
    proxy.stop()
    streamed, blocked = network_events(read_tape(tmp_path / "tape"))
    assert streamed["outcome"] == "ok" and streamed["llm"]["usage"]["total_tokens"] == 1100
    assert blocked["outcome"] == "BLOCKED" and blocked["status"] == 429
