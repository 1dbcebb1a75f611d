"""Held attack: a stream without usage whose request sets a tiny output cap the upstream does not honour,
so that the budget's estimate (a token per generated character, at most the cap) is charged the cap.

The request sets `max_completion_tokens: 1` beside `max_tokens: 8000` (an OpenAI-compatible server may
honour only `max_tokens`), or `max_tokens: 1` alone to an upstream that ignores it; the upstream streams
20,000 characters without usage. The estimate counts the largest cap, and no cap at all once the text
is longer than the cap could carry: the budget is reached, the stream cut or the next call refused."""

from __future__ import annotations

import json

import httpx

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.budget_helpers import stream_without_usage, token_budget
from tests.security.upstream import LoggingUpstream

TEXT = "word " * 4000  # 20,000 characters
POLICY = token_budget(500, metric="output_tokens")


def _content_chars(sse: bytes) -> int:
    """Characters of content in the `data:` chunks the client received (the test's own count)."""
    total = 0
    for line in sse.decode(errors="replace").splitlines():
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            continue
        try:
            chunk = json.loads(line[5:])
        except ValueError:
            continue  # a line cut mid-stream
        for choice in chunk.get("choices") or []:
            total += len((choice.get("delta") or {}).get("content") or "")
    return total


def _chat(body: dict) -> dict:
    return {"model": "deepseek-chat", "stream": True, "messages": [{"role": "user", "content": "hi"}], **body}


def test_an_ignored_cap_is_charged_every_character(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    plain_logging_upstream.respond_with = stream_without_usage(TEXT)
    proxy = start_proxy(policy_file(POLICY))
    url = f"{plain_logging_upstream.url}/v1/chat/completions"
    with proxied_client(proxy) as client:
        first = client.post(url, json=_chat({"max_tokens": 1}))
        refused = [client.post(url, json=_chat({"max_tokens": 1})) for _ in range(2)]
    proxy.flush()
    chars = _content_chars(first.content)
    assert first.status_code == 200 and chars == len(TEXT)
    assert [r.status_code for r in refused] == [429, 429]
    assert plain_logging_upstream.received_bytes().count(b"POST /v1/chat/completions") == 1

    allowed, *blocked = network_events(read_tape(tmp_path / "tape"))
    estimate = allowed["llm"]["budget_estimate"]
    assert estimate["output_tokens"] >= chars  # not the cap of 1 token the upstream ignored
    assert [(e["decision"], e["rule"]) for e in blocked] == [("BLOCK", "budget:tokens")] * 2


def test_the_largest_cap_counts_and_the_stream_is_cut(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """The reviewer's request: `max_completion_tokens: 1, max_tokens: 8000` with `cut_stream`."""
    plain_logging_upstream.respond_with = stream_without_usage(TEXT)
    proxy = start_proxy(policy_file(POLICY + "    on_exceed: cut_stream\n"))
    url = f"{plain_logging_upstream.url}/v1/chat/completions"
    body = _chat({"max_completion_tokens": 1, "max_tokens": 8000})
    received = bytearray()
    with proxied_client(proxy) as client:
        try:
            with client.stream("POST", url, json=body) as response:
                for chunk in response.iter_bytes():
                    received += chunk
        except httpx.HTTPError:
            pass
        after = [client.post(url, json=body) for _ in range(2)]
    proxy.flush()
    assert b"[DONE]" not in received
    chars = _content_chars(bytes(received))
    assert chars < len(TEXT)
    assert [r.status_code for r in after] == [429, 429]
    assert plain_logging_upstream.received_bytes().count(b"POST /v1/chat/completions") == 1

    cut, *blocked = network_events(read_tape(tmp_path / "tape"))
    assert cut["cut"]["reason"] == "budget"
    assert cut["llm"]["budget_estimate"]["output_tokens"] >= max(chars, 500)
    assert [(e["decision"], e["rule"]) for e in blocked] == [("BLOCK", "budget:tokens")] * 2
