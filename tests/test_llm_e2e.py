"""LLM evidence through the real proxy: real SDKs, exact wire formats, exact tokens and cost."""

from __future__ import annotations

import ssl
import time
from decimal import Decimal
from pathlib import Path

import anthropic
import httpx
import httpx2
import openai
import orjson
import pytest

from tests.helpers import network_events, read_tape

USAGE = {"input": 1200, "output": 345, "cached": 200, "cache_write": 100, "reasoning": 40}
M = Decimal(1_000_000)


# Published list prices per 1M tokens (input, output, cache read, cache write), copied by hand from
# openai.com/api/pricing and platform.claude.com/docs/en/about-claude/pricing.
PUBLISHED = {
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60"), Decimal("0.075"), Decimal("0.15")),
    "gpt-4o": (Decimal("2.50"), Decimal("10"), Decimal("1.25"), Decimal("2.50")),
    "claude-sonnet-4-5": (Decimal("3"), Decimal("15"), Decimal("0.30"), Decimal("3.75")),
}


def expected_usd(model: str, *, input_total: int, cached: int, cache_write: int, output: int) -> float:
    """The bill computed by hand from the providers' published prices."""
    price_in, price_out, cached_rate, write_rate = PUBLISHED[model]
    total = (
        Decimal(input_total - cached - cache_write) * price_in
        + Decimal(cached) * cached_rate
        + Decimal(cache_write) * write_rate
        + Decimal(output) * price_out
    ) / M
    return float(round(total, 9))


@pytest.fixture
def llm_clients(start_proxy, upstream):  # type: ignore[no-untyped-def]
    proxy = start_proxy()
    trust = ssl.create_default_context(cafile=str(proxy.ca_cert))
    http = httpx.Client(proxy=proxy.url, verify=trust)
    http2 = httpx2.Client(proxy=proxy.url, verify=trust)
    usage_header = {"x-standin-usage": orjson.dumps(USAGE).decode()}
    oa = openai.OpenAI(
        base_url=upstream.url + "/v1", api_key="sk-x", http_client=http, default_headers=usage_header
    )
    an = anthropic.Anthropic(
        base_url=upstream.url, api_key="sk-ant-x", http_client=http2, default_headers=usage_header
    )
    yield proxy, oa, an
    http.close()
    http2.close()


def llm_events(proxy, tmp_path: Path) -> list[dict]:  # type: ignore[no-untyped-def]
    proxy.stop()
    return [e for e in network_events(read_tape(tmp_path / "tape")) if e.get("llm")]


def test_openai_chat_json_and_sse_usage(llm_clients, tmp_path):
    proxy, oa, _ = llm_clients
    oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "json please"}])
    list(
        oa.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "stream with usage"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    list(
        oa.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "stream without usage"}], stream=True
        )
    )
    plain, with_usage, without_usage = llm_events(proxy, tmp_path)
    want = expected_usd("gpt-4o-mini", input_total=1200, cached=200, cache_write=0, output=345)
    for ev in (plain, with_usage):
        llm = ev["llm"]
        assert (llm["provider"], llm["api"], llm["request_model"]) == (
            "openai_compatible",
            "chat_completions",
            "gpt-4o-mini",
        )
        assert llm["usage"]["known"] is True
        assert llm["usage"]["input_tokens"] == 1200 and llm["usage"]["output_tokens"] == 345
        assert llm["usage"]["cached_input_tokens"] == 200 and llm["usage"]["reasoning_tokens"] == 40
        assert llm["cost"]["usd"] == pytest.approx(want, abs=1e-12)
        assert ev["warnings"] == []
    assert plain["llm"]["stream"] is False and with_usage["llm"]["stream"] is True
    unknown = without_usage["llm"]
    assert unknown["usage"]["known"] is False
    assert unknown["usage"]["input_tokens"] is None, "unknown usage is recorded as unknown, never 0"
    assert unknown["cost"] == {**unknown["cost"], "usd": None, "reason": "usage_unknown"}
    assert [w["reason"] for w in without_usage["warnings"]] == ["usage_unknown"]


def test_openai_responses_json_and_sse(llm_clients, tmp_path):
    proxy, oa, _ = llm_clients
    oa.responses.create(model="gpt-4o", input="hello responses")
    with oa.responses.stream(model="gpt-4o", input="stream responses") as stream:
        stream.get_final_response()
    events = llm_events(proxy, tmp_path)
    assert len(events) == 2
    want = expected_usd("gpt-4o", input_total=1200, cached=200, cache_write=0, output=345)
    for ev in events:
        llm = ev["llm"]
        assert llm["api"] == "responses"
        assert (llm["usage"]["input_tokens"], llm["usage"]["output_tokens"]) == (1200, 345)
        assert llm["cost"]["usd"] == pytest.approx(want, abs=1e-12)
    assert [e["llm"]["stream"] for e in events] == [False, True]


def test_anthropic_json_and_sse_with_cache_tokens(llm_clients, tmp_path):
    proxy, _, an = llm_clients
    an.messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "json"}]
    )
    with an.messages.stream(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "sse"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == 345
    events = llm_events(proxy, tmp_path)
    assert len(events) == 2
    # Anthropic's input_tokens exclude cache reads and writes; failcore records the total input.
    want = expected_usd("claude-sonnet-4-5", input_total=1500, cached=200, cache_write=100, output=345)
    for ev in events:
        usage = ev["llm"]["usage"]
        assert ev["llm"]["provider"] == "anthropic_compatible"
        assert usage["input_tokens"] == 1500
        # message_delta usage is cumulative: 3 then 345; summing would give 348
        assert usage["output_tokens"] == 345
        assert (usage["cached_input_tokens"], usage["cache_write_tokens"]) == (200, 100)
        assert ev["llm"]["cost"]["usd"] == pytest.approx(want, abs=1e-12)
        assert ev["llm"]["finish_reason"] == "end_turn"


def test_unpriced_model_and_contract_drift_are_warnings(llm_clients, tmp_path):
    proxy, oa, _ = llm_clients
    oa.chat.completions.create(
        model="in-house-model-7",
        messages=[{"role": "user", "content": "give me json"}],
        response_format={"type": "json_object"},
    )
    oa.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "json ok"}],
        response_format={"type": "json_object"},
        extra_headers={"x-standin-reply": '{"ok": true}'},
    )
    drifted, kept = llm_events(proxy, tmp_path)
    assert drifted["llm"]["cost"]["usd"] is None and drifted["llm"]["cost"]["reason"] == "unpriced_model"
    assert {w["reason"] for w in drifted["warnings"]} == {"unpriced_model", "contract_drift"}
    assert drifted["llm"]["contract_drift"].startswith("response is not valid JSON")
    assert kept["llm"]["contract_drift"] is None and kept["warnings"] == []


def test_tool_calls_are_counted(llm_clients, tmp_path):
    proxy, oa, an = llm_clients
    tool = {
        "type": "function",
        "function": {
            "name": "read_file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
    oa.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "read it"}], tools=[tool]
    )
    list(
        oa.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "read it"}], tools=[tool], stream=True
        )
    )
    an.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=[{"role": "user", "content": "read it"}],
        tools=[
            {
                "name": "read_file",
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
            }
        ],
    )
    events = llm_events(proxy, tmp_path)
    assert [e["llm"]["tool_calls"] for e in events] == [1, 1, 1]
    assert [e["llm"]["finish_reason"] for e in events] == ["tool_calls", "tool_calls", "tool_use"]


def test_sdk_hanging_up_at_the_final_event_is_metered_and_ok(llm_clients, tmp_path):
    """The OpenAI SDK closes the connection as soon as it reads `data: [DONE]`. When the server has
    not ended the HTTP message by then, mitmproxy sees a client disconnect; the call still happened,
    was billed, and the agent has its whole answer. (Found as a flaky test: it depends on whether the
    chunked terminator arrives in the same read as `[DONE]`; linger makes it certain.)"""
    proxy, oa, _ = llm_clients
    chunks = list(
        oa.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "stream then linger"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-standin-linger": "1.0"},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 345
    proxy.stop()
    events = read_tape(tmp_path / "tape")
    [event] = network_events(events)
    assert (event["outcome"], event["fail_reason"]) == ("ok", None)
    assert event["error"] == "Client closed the connection after the stream's final event."
    llm = event["llm"]
    assert llm["stream"] is True and llm["finish_reason"] == "stop"
    assert (llm["usage"]["known"], llm["usage"]["input_tokens"], llm["usage"]["output_tokens"]) == (
        True,
        1200,
        345,
    )
    want = expected_usd("gpt-4o-mini", input_total=1200, cached=200, cache_write=0, output=345)
    assert llm["cost"]["usd"] == pytest.approx(want)
    [run_end] = [e for e in events if e["kind"] == "run_end"]
    assert run_end["detail"]["failed"] == 0


def test_stream_abandoned_before_its_final_event_is_a_failure_with_what_was_metered(llm_clients, tmp_path):
    proxy, _, an = llm_clients
    with an.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=[{"role": "user", "content": "one two three four five six seven eight"}],
        extra_headers={"x-standin-gap": "0.2"},
    ) as stream:
        first = next(iter(stream))
    assert first.type == "message_start"
    proxy.stop()
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["outcome"], event["fail_reason"]) == ("FAIL", "client_disconnect")
    llm = event["llm"]
    # message_start carried the input side (1200 + cache read 200 + cache write 100); the output was
    # never seen whole, so the usage is not called known and the cost is not made up.
    assert llm["usage"]["input_tokens"] == 1500 and llm["finish_reason"] is None
    assert llm["usage"]["known"] is False and llm["cost"]["usd"] is None
    print(llm)


def test_policy_prices_override_the_shipped_table_and_follow_a_reload(
    start_proxy, policy_file, upstream, tmp_path
):
    policy = policy_file(
        "prices:\n  gpt-4o-mini: {input: 100.0, output: 1000.0}\n  my-finetune: {input: 1, output: 2}\n"
    )
    proxy = start_proxy(policy, sets=["failcore_policy_poll_ms=50"])
    trust = ssl.create_default_context(cafile=str(proxy.ca_cert))
    with httpx.Client(proxy=proxy.url, verify=trust) as http:
        oa = openai.OpenAI(base_url=upstream.url + "/v1", api_key="sk-x", http_client=http, max_retries=0)
        ask = {
            "messages": [{"role": "user", "content": "hi"}],
            "extra_headers": {"x-standin-usage": '{"input": 1000000, "output": 1000000}'},
        }
        oa.chat.completions.create(model="gpt-4o-mini", **ask)
        oa.chat.completions.create(model="my-finetune", **ask)
        policy.write_text("prices:\n  my-finetune: {input: 5, output: 7}\n")
        reload_seen = tmp_path / "tape"
        deadline = time.monotonic() + 10
        while not any(
            e.get("detail", {}).get("action") == "policy.reload" for e in _flushed(proxy, reload_seen)
        ):
            assert time.monotonic() < deadline, "the policy edit was not picked up"
            time.sleep(0.05)
        oa.chat.completions.create(model="my-finetune", **ask)
        oa.chat.completions.create(model="gpt-4o-mini", **ask)
    proxy.stop()
    events = network_events(read_tape(tmp_path / "tape"))
    costs = [e["llm"]["cost"]["usd"] for e in events]
    listed = PUBLISHED["gpt-4o-mini"]
    assert costs == [1100.0, 3.0, 12.0, float(listed[0] + listed[1])]
    sources = [e["llm"]["cost"]["source"] for e in events]
    assert sources[:3] == ["policy"] * 3 and sources[3].startswith("genai-prices ")


def _flushed(proxy, tape):  # type: ignore[no-untyped-def]
    proxy.flush()
    return read_tape(tape)
