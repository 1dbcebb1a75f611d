"""What the budget attacks share: a policy with one token budget, an OpenAI answer with usage, a stream
without it (and the recorded ones), and the three calls a 3000-token budget lets two of."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.helpers import network_events, proxied_client, read_tape
from tests.llm_replay import load_exchanges

if TYPE_CHECKING:
    from tests.helpers import ProxyThread
    from tests.security.upstream import LoggingUpstream


def recorded_streams_without_usage() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(request, exchange) for each recorded OpenAI chat stream that asked for no usage
    (`stream_options`) and reports none: what a budget must estimate."""
    for exchange in load_exchanges():
        if exchange["host"] != "api.openai.com:443" or exchange["path"] != "/v1/chat/completions":
            continue
        if "event-stream" not in (exchange["response_headers"].get("content-type") or ""):
            continue
        request = json.loads(exchange["request_body"])
        reports_usage = '"usage":{' in exchange["response_body"].replace(" ", "")
        if request.get("stream") is True and "stream_options" not in request and not reports_usage:
            yield request, exchange


def token_budget(limit: int, scope: str = "", *, metric: str = "total_tokens", mode: str = "enforce") -> str:
    """A policy with one run-long budget `tokens` of `limit` `metric` (an `on_exceed:` line may be
    appended: it lands in the budget)."""
    return f"""
version: 1
mode: {mode}
default: ALLOW
budgets:
  - id: tokens
    window: run
    {scope}
    limits: {{{metric}: {limit}}}
"""


def completion(total_tokens: int) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A Chat Completions answer reporting `total_tokens`, as LoggingUpstream.respond_with."""
    half = total_tokens // 2
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": half,
            "completion_tokens": total_tokens - half,
            "total_tokens": total_tokens,
        },
    }
    return 200, [(b"content-type", b"application/json")], json.dumps(body).encode()


def stream_without_usage(
    text: str, *, step: int = 100, model: str = "deepseek-chat"
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A Chat Completions stream of `text`, `step` characters a chunk, with no usage (no
    `stream_options.include_usage`), as LoggingUpstream.respond_with."""
    chunks = [
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": {"content": text[i : i + step]}, "finish_reason": None}],
        }
        for i in range(0, len(text), step)
    ]
    sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return 200, [(b"content-type", b"text/event-stream")], sse.encode()


def two_charged_then_refused(
    proxy: ProxyThread, upstream: LoggingUpstream, tape: Path, url: str, body: dict
) -> list[dict]:
    """Three POSTs of `body` to `url` under token_budget(3000) with an answer of 2000 tokens: two reach
    the upstream and are charged 2000 each, the third (4000 >= 3000) is refused by `budget:tokens` and
    never leaves. The two charged calls' events, for the caller's checks of what they were read as."""
    with proxied_client(proxy) as client:
        statuses = [client.post(url, json=body).status_code for _ in range(3)]
    proxy.flush()
    assert statuses == [200, 200, 429]  # 2000, then 4000 >= 3000: the third never leaves
    assert upstream.received_bytes().count(b"POST ") == 2

    events = network_events(read_tape(tape))
    assert [(e["decision"], e["rule"]) for e in events][2] == ("BLOCK", "budget:tokens")
    for event in events[:2]:
        assert event["llm"]["usage"]["total_tokens"] == 2000
    return events[:2]


CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def completion_without_usage(text: str) -> bytes:
    """A chat completion answering `text` that reports no usage."""
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gpt-4o-2024-08-06",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
        }
    ).encode()
