"""Held attack: an LLM call whose request body streams through (mitmproxy's `stream_large_bodies` below
its size, a chunked upload where nothing holds it) was not metered: its request was never parsed, so it
was no LLM call to the budget, its tokens never charged, and (streamed by mitmproxy before failcore's
hold) it was admitted only once its body had already left, as was any upload mitmproxy streams."""

from __future__ import annotations

import json
from collections.abc import Iterator

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.budget_helpers import stream_without_usage, token_budget
from tests.security.upstream import LoggingUpstream

TEXT = "word " * 400  # 2,000 characters of answer


BODY = {
    "model": "deepseek-chat",
    "stream": True,
    "messages": [{"role": "user", "content": "x" * 20_000}],
}


def _judged_then_refused(proxy, upstream: LoggingUpstream, tape, send) -> None:
    """Two calls past mitmproxy's `stream_large_bodies` (taken over by failcore): the first is held,
    judged with its model and charged; the budget it exhausts answers the second 429, nothing of it sent."""
    with proxied_client(proxy) as client:
        statuses = [send(client).status_code for _ in range(2)]
    proxy.flush()
    assert statuses == [200, 429]
    assert plain_post_count(upstream) == 1

    allowed, refused = network_events(read_tape(tape))
    assert (allowed["decision"], allowed["llm"]["request_model"]) == ("ALLOW", "deepseek-chat")
    assert allowed["llm"]["budget_estimate"]["total_tokens"] > 10_000
    assert (refused["decision"], refused["rule"]) == ("BLOCK", "budget:tokens")


def plain_post_count(upstream: LoggingUpstream) -> int:
    return upstream.received_bytes().count(b"POST /v1/chat/completions")


def test_stream_large_bodies_llm_call_never_leaves_unjudged(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """Enforce mode with budgets: mitmproxy streamed the body upstream before the budget could read it
    (its model, its size). The option is taken over: the body is held and the call judged."""
    plain_logging_upstream.respond_with = stream_without_usage(TEXT)
    proxy = start_proxy(policy_file(token_budget(10_000)), sets=["stream_large_bodies=1k"])
    url = f"{plain_logging_upstream.url}/v1/chat/completions"
    _judged_then_refused(proxy, plain_logging_upstream, tmp_path / "tape", lambda c: c.post(url, json=BODY))


def _chunked(body: bytes) -> Iterator[bytes]:
    for i in range(0, len(body), 4096):
        yield body[i : i + 4096]


def test_chunked_llm_call_is_metered_and_charged(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """Observe mode (nothing is held): the chunked request streams through, and is still parsed and charged
    by the bytes that streamed, so the budget's warning comes at the second call."""
    plain_logging_upstream.respond_with = stream_without_usage(TEXT)
    proxy = start_proxy(policy_file(token_budget(10_000, mode="observe")))
    url = f"{plain_logging_upstream.url}/v1/chat/completions"
    body = json.dumps(BODY).encode()
    headers = {"content-type": "application/json"}
    with proxied_client(proxy) as client:
        statuses = [client.post(url, content=_chunked(body), headers=headers).status_code for _ in range(2)]
    proxy.flush()
    assert statuses == [200, 200]  # observe mode: nothing refused
    received = plain_logging_upstream.received_bytes()
    assert received.count(b"POST /v1/chat/completions") == 2
    assert received.lower().count(b"transfer-encoding: chunked") == 2  # it did stream

    first, second = network_events(read_tape(tmp_path / "tape"))
    assert (first["llm"]["api"], first["llm"]["request_model"]) == ("chat_completions", "deepseek-chat")
    assert first["llm"]["budget_estimate"]["input_tokens"] >= len(body)  # a token per byte streamed
    assert (second["decision"], second["rule"]) == ("WARN", "budget:tokens")


def test_chunked_llm_call_past_stream_large_bodies_never_leaves_unjudged(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """The same with a chunked body: its size is unknown at its headers, and mitmproxy streamed it once
    it outgrew `stream_large_bodies`, whatever failcore's hold had set."""
    plain_logging_upstream.respond_with = stream_without_usage(TEXT)
    proxy = start_proxy(policy_file(token_budget(10_000)), sets=["stream_large_bodies=1k"])
    url = f"{plain_logging_upstream.url}/v1/chat/completions"
    headers = {"content-type": "application/json"}
    body = json.dumps(BODY).encode()
    _judged_then_refused(
        proxy,
        plain_logging_upstream,
        tmp_path / "tape",
        lambda c: c.post(url, content=_chunked(body), headers=headers),
    )


def test_exhausted_budget_refuses_an_upload_mitmproxy_streams(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """Off LLM paths nothing is held: the budget decides at the request's headers. An upload mitmproxy
    streams (`stream_large_bodies`) was admitted only at its end, once its body had left."""
    plain_logging_upstream.respond_with = (200, [(b"content-type", b"text/plain")], b"ok")
    proxy = start_proxy(policy_file(token_budget(1, metric="requests")), sets=["stream_large_bodies=1k"])
    url = f"{plain_logging_upstream.url}/upload"
    with proxied_client(proxy) as client:
        assert client.post(url, content=b"a" * 20_000).status_code == 200
        # Refused at its headers with an answer: the option is failcore's, so nothing streams yet.
        assert client.post(url, content=b"b" * 20_000).status_code == 429
    proxy.flush()
    received = plain_logging_upstream.received_bytes()
    assert received.count(b"POST /upload") == 1 and b"bbbb" not in received

    allowed, refused = network_events(read_tape(tmp_path / "tape"))
    assert allowed["decision"] == "ALLOW"
    assert (refused["decision"], refused["rule"]) == ("BLOCK", "budget:tokens")
