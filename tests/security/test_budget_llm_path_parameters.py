"""Held attack: an LLM call whose path a routing server reads otherwise than as written, so detection
did not see it and its tokens were never charged.

`/v1/chat%2Fcompletions`: uvicorn (Starlette, FastAPI: vLLM's and LiteLLM's OpenAI-compatible servers)
and werkzeug decode `%2F` before routing, so it reaches the chat handler (checked against uvicorn 0.54
and werkzeug 3.1: 200 from a route for `/v1/chat/completions`; aiohttp answers 404). `;x=1` path
parameters: Tomcat, Jetty and Spring drop them before routing (uvicorn, aiohttp and werkzeug answer 404).
Policy rules already read a path both ways (failcore.policy.decide.path_aliases); detection now does
too. The logging upstream stands in for a server that routes it: it answers every path."""

from __future__ import annotations

import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.budget_helpers import CHAT, completion, token_budget
from tests.security.upstream import LoggingUpstream


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions;x=1",
        "/v1/chat;x=1/completions",
        "/v1/chat/completions%3Bx=1",
        "/v1/chat%2Fcompletions",
        "/v1%2fchat%2fcompletions",
    ],
)
def test_a_chat_path_a_server_reads_otherwise_is_charged(
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
    received = plain_logging_upstream.received_bytes()
    assert received.count(b"POST ") == 2 and received.count(f"POST {path} ".encode()) == 2, "sent as written"

    events = network_events(read_tape(tmp_path / "tape"))
    assert [(e["decision"], e["rule"]) for e in events][2] == ("BLOCK", "budget:tokens")
    for event in events[:2]:
        assert event["llm"]["api"] == "chat_completions"
        assert event["llm"]["usage"]["total_tokens"] == 2000
