"""The estimate budgets charge for a call whose usage the provider did not report, checked against the
usage real providers did report (tests/data/conformance, read by tests.llm_replay.reported_usage), and
the ledger that charges a fetched Responses API response once."""

from __future__ import annotations

import json

from failcore.budget import Usage
from failcore.budgetcharge import (
    HIDDEN_REASONING_TOKENS,
    ChargedResponses,
    estimate_usage,
    hides_reasoning,
    max_output_tokens,
    reports_usage,
)
from failcore.llm import SseUsageTracker, detect_api
from tests.llm_replay import load_exchanges, reported_usage


def _streams() -> list[tuple[dict, dict | None, tuple[str, str]]]:
    found = []
    for exchange in load_exchanges():
        content_type = exchange["response_headers"].get("content-type") or ""
        if exchange["status"] != 200 or not ("event-stream" in content_type or "ndjson" in content_type):
            continue
        try:
            request = json.loads(exchange["request_body"] or "")
        except ValueError:
            request = None
        request = request if isinstance(request, dict) else None
        detected = detect_api(exchange["host"], exchange["path"], request)
        if detected is not None:
            found.append((exchange, request, detected))
    return found


def _estimate(exchange: dict, request: dict | None, detected: tuple[str, str]):  # type: ignore[no-untyped-def]
    tracker = SseUsageTracker(*detected)
    tracker.feed(exchange["response_body"].encode())
    tracker.finish()
    return estimate_usage(
        request_bytes=len(exchange["request_body"].encode()),
        output_chars=tracker.generated_chars,
        output_words=tracker.generated_words,
        request_json=request,
        tool_calls=tracker.tool_calls,
        hidden_reasoning=hides_reasoning(request),
    )


def test_estimate_is_never_below_what_real_providers_reported() -> None:
    """Every recorded stream whose provider reported usage, estimated as if it had not: the estimate is
    at least the reported input and output (requests whose bodies were cut for the recording left out)."""
    checked = 0
    for exchange, request, detected in _streams():
        reported = reported_usage(exchange)
        if reported is None or exchange["request_trimmed"]:
            continue
        estimate = _estimate(exchange, request, detected)
        where = exchange["id"]
        assert estimate.input_tokens >= reported.input_tokens, where
        assert estimate.output_tokens >= reported.output_tokens, where
        checked += 1
    assert checked >= 60  # OpenAI chat and Responses, Anthropic, Groq, Mistral, DeepSeek, Ollama, …


def test_streams_without_usage_are_charged_more_than_nothing() -> None:
    """The recorded OpenAI streams made without stream_options.include_usage (the attack's traffic)."""
    checked = 0
    for exchange, request, detected in _streams():
        if reported_usage(exchange) is not None or detected[0] != "openai":
            continue
        estimate = _estimate(exchange, request, detected)
        assert estimate.input_tokens == len(exchange["request_body"].encode()) > 0, exchange["id"]
        assert estimate.output_tokens > 0, exchange["id"]
        checked += 1
    assert checked >= 50


def test_max_tokens_caps_the_output_estimate() -> None:
    assert max_output_tokens({"max_tokens": 20, "n": 3}) == 60
    # Several caps: the largest (an upstream may honour only `max_tokens`, or only the other one).
    assert max_output_tokens({"max_completion_tokens": 7, "max_tokens": 99}) == 99
    assert max_output_tokens({"max_output_tokens": 5}) == 5
    assert max_output_tokens({"generationConfig": {"maxOutputTokens": 9}}) == 9
    assert max_output_tokens({"options": {"num_predict": 11}}) == 11
    assert max_output_tokens({"max_tokens": True}) is None and max_output_tokens(None) is None
    estimate = estimate_usage(request_bytes=10, output_chars=1000, request_json={"max_tokens": 20})
    assert (estimate.input_tokens, estimate.output_tokens) == (10, 20)
    # An input count the provider reported (Anthropic's message_start) is taken as it is; a partial
    # output count when it is higher.
    estimate = estimate_usage(request_bytes=10, output_chars=0, request_json=None, reported_input=50)
    assert estimate.input_tokens == 50
    estimate = estimate_usage(request_bytes=10, output_chars=0, request_json=None, reported_input=5)
    assert estimate.input_tokens == 5
    estimate = estimate_usage(request_bytes=10, output_chars=0, request_json=None, reported_output=30)
    assert estimate.output_tokens == 30


def test_which_streams_report_their_usage() -> None:
    assert not reports_usage("chat_completions", {"stream": True})
    assert not reports_usage("completions", {"stream_options": {"include_usage": False}})
    assert reports_usage("chat_completions", {"stream_options": {"include_usage": True}})
    assert reports_usage("messages", None) and reports_usage("responses", {})


def test_a_response_is_charged_once() -> None:
    ledger = ChargedResponses(limit=2)
    real = Usage(input_tokens=1000, output_tokens=1000, total_tokens=2000, cost_usd=0.5)
    guess = Usage(input_tokens=60, output_tokens=4, total_tokens=64, cost_usd=0.01)
    key = ("api.openai.com", "resp_1")
    assert ledger.settle(key, guess) == guess  # the background POST: an estimate
    delta = ledger.settle(key, real)  # its result, fetched: only what the estimate did not cover
    assert (delta.input_tokens, delta.output_tokens, delta.total_tokens) == (940, 996, 1936)
    assert abs(delta.cost_usd - 0.49) < 1e-9
    assert ledger.settle(key, real) == Usage()  # polled again
    assert ledger.settle(None, real) == real  # no id: every call is charged
    ledger.settle(("h", "a"), real)
    ledger.settle(("h", "b"), real)  # bounded: resp_1 forgotten, so charged again (too much, not too little)
    assert ledger.settle(key, real) == real


def test_the_cap_counts_its_largest_key_and_only_while_the_text_fits_in_it() -> None:
    """An upstream that honours another cap than the smallest, or none, is charged what it generated."""
    assert max_output_tokens({"max_completion_tokens": 1, "max_tokens": 8000}) == 8000
    assert max_output_tokens({"max_tokens": 8000, "max_completion_tokens": 1}) == 8000
    assert max_output_tokens({"max_tokens": 1, "generationConfig": {"maxOutputTokens": 50}}) == 50
    assert max_output_tokens({"max_tokens": 1, "options": {"num_predict": 70}}) == 70
    assert max_output_tokens({"max_tokens": 5, "options": {"num_predict": -1}}) is None  # Ollama: no cap
    assert max_output_tokens({"generationConfig": {"maxOutputTokens": 10, "candidateCount": 3}}) == 30
    # The reviewer's request: 20,000 characters generated, charged as 20,000 (+ the answer's framing).
    reviewer = {"max_completion_tokens": 1, "max_tokens": 8000}
    estimate = estimate_usage(request_bytes=10, output_chars=20_000, request_json=reviewer)
    assert estimate.output_tokens == 8000  # the largest cap can carry 20,000 characters: capped by it
    # A cap the upstream ignored: no token of cl100k_base or o200k_base decodes to more than 128
    # characters (a run of 128 spaces), so 129 characters are not 1 token.
    honoured = estimate_usage(request_bytes=0, output_chars=128, request_json={"max_tokens": 1})
    assert honoured.output_tokens == 1
    ignored = estimate_usage(request_bytes=0, output_chars=129, request_json={"max_tokens": 1})
    assert ignored.output_tokens == 129 + 4
    ignored = estimate_usage(request_bytes=0, output_chars=20_000, request_json={"max_tokens": 2, "n": 3})
    assert ignored.output_tokens == 20_004


def test_real_providers_stay_within_the_characters_their_cap_allows() -> None:
    """Every recorded stream whose request set a cap: the text fits in cap x 128 characters, so an honest
    provider's answer is capped as before (the new bound never charges it per character)."""
    checked = 0
    for exchange, request, detected in _streams():
        cap = max_output_tokens(request)
        if cap is None:
            continue
        tracker = SseUsageTracker(*detected)
        tracker.feed(exchange["response_body"].encode())
        tracker.finish()
        assert tracker.generated_chars <= cap * 128, exchange["id"]
        assert tracker.generated_words <= cap, exchange["id"]  # nor per character by its words
        checked += 1
    assert checked >= 10


def test_which_requests_may_hide_reasoning() -> None:
    """OpenAI's reasoning models (named as a router names them too) and any request asking for
    reasoning; not a chat model, a `-chat` variant of gpt-5, or reasoning switched off."""
    hidden = [{"model": m} for m in ("gpt-5-nano", "gpt-5.1", "o1", "o3-mini", "openai/o4-mini")]
    hidden += [{"model": "x", "reasoning_effort": "low"}, {"model": "x", "reasoning": {"exclude": True}}]
    assert all(hides_reasoning(r) for r in hidden)
    shown = [{"model": m} for m in ("gpt-4o", "gpt-5-chat-latest", "deepseek-reasoner", "omni-moderation")]
    shown += [
        {"model": "gpt-5.1", "reasoning_effort": "none"},
        {"model": "x", "reasoning": {"enabled": False}},
    ]
    assert not any(hides_reasoning(r) for r in shown)
    assert hides_reasoning({}, "gpt-5-mini")  # a model named by the path (Azure's deployment)


def test_hidden_reasoning_is_charged_the_cap_or_the_ceiling() -> None:
    common = {"request_bytes": 100, "output_chars": 40, "output_words": 8}
    assert estimate_usage(**common, request_json={"max_completion_tokens": 900}).output_tokens == 44
    capped = estimate_usage(**common, request_json={"max_completion_tokens": 900}, hidden_reasoning=True)
    assert capped.output_tokens == 900
    assert (
        estimate_usage(**common, request_json={}, hidden_reasoning=True).output_tokens
        == HIDDEN_REASONING_TOKENS
    )
    # A cap the upstream ignored (more words than it allows) bounds nothing.
    ignored = estimate_usage(
        request_bytes=100,
        output_chars=400,
        output_words=80,
        request_json={"max_tokens": 50},
        hidden_reasoning=True,
    )
    assert ignored.output_tokens == HIDDEN_REASONING_TOKENS


def test_words_split_across_deltas_are_counted_once() -> None:
    tracker = SseUsageTracker("openai", "chat_completions")
    deltas = ["Hel", "lo wo", "rld", " ", "again ", "and", "\n", "more"]
    for delta in deltas:
        chunk = {"choices": [{"index": 0, "delta": {"content": delta}}]}
        tracker.feed(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    tracker.finish()
    assert tracker.generated_words == len("".join(deltas).split()) == 5


def test_visible_reasoning_is_counted() -> None:
    """DeepSeek's `reasoning_content` and OpenRouter's `reasoning` deltas are generated (billed) text."""
    tracker = SseUsageTracker("deepseek", "chat_completions")
    for delta in ({"reasoning_content": "a" * 300}, {"reasoning": "b" * 200}, {"content": "ok"}):
        chunk = {"choices": [{"index": 0, "delta": delta}]}
        tracker.feed(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    tracker.finish()
    assert tracker.generated_chars == 502
