"""Held attack: `/v1/chat/completion%73` (an unreserved character percent-encoded) is the same endpoint
to the origin server, but was not recognised as an LLM call, so its tokens were never charged."""

from __future__ import annotations

import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.budget_helpers import CHAT, completion, token_budget
from tests.security.upstream import LoggingUpstream


@pytest.mark.parametrize(
    "path", ["/v1/chat/completion%73", "/v1/chat/%63ompletions", "/v1/x/../chat/completions"]
)
def test_encoded_llm_path_is_charged(
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
    assert plain_logging_upstream.received_bytes().count(b"POST ") == 2

    events = network_events(read_tape(tmp_path / "tape"))
    assert [(e["decision"], e["rule"]) for e in events][2] == ("BLOCK", "budget:tokens")
    for event in events[:2]:
        assert event["llm"]["api"] == "chat_completions"
        assert event["llm"]["usage"]["total_tokens"] == 2000
