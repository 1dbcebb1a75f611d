"""Held attack: an upstream that ignores the request's cap on generated tokens answers with ordinary
text short enough to pass as "at most cap tokens" by characters alone (≤ cap × 128, the longest token
of OpenAI's vocabularies, a run of spaces), so a stream without usage was charged only the cap.

A cap of 100 tokens and 8,000 characters of words: at most 128 characters a token they could be 100
tokens, but no tokenizer makes fewer tokens of a text than it has words (runs without whitespace),
and there are 1,600 of them. The cap was not honoured: every character is charged."""

from __future__ import annotations

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.budget_helpers import stream_without_usage, token_budget
from tests.security.upstream import LoggingUpstream

TEXT = "word " * 1600  # 8,000 characters, 1,600 words
POLICY = token_budget(1000, metric="output_tokens")


def test_more_words_than_the_cap_is_charged_every_character(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    assert len(TEXT) <= 100 * 128 and len(TEXT.split()) > 1000
    # Words split across chunks: each still counted once.
    plain_logging_upstream.respond_with = stream_without_usage(TEXT, step=7)
    proxy = start_proxy(policy_file(POLICY))
    url = f"{plain_logging_upstream.url}/v1/chat/completions"
    body = {
        "model": "deepseek-chat",
        "stream": True,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
    }
    with proxied_client(proxy) as client:
        first = client.post(url, json=body)
        second = client.post(url, json=body)
    proxy.flush()
    assert first.status_code == 200 and first.content.endswith(b"data: [DONE]\n\n")
    assert second.status_code == 429
    assert plain_logging_upstream.received_bytes().count(b"POST /v1/chat/completions") == 1

    allowed, refused = network_events(read_tape(tmp_path / "tape"))
    assert allowed["llm"]["budget_estimate"]["output_tokens"] >= len(TEXT)  # not the ignored cap of 100
    assert (refused["decision"], refused["rule"]) == ("BLOCK", "budget:tokens")
