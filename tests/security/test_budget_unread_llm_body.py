"""Held attack: an Anthropic-compatible `/v1/messages` call (a LiteLLM proxy, a FastAPI gateway) off
api.anthropic.com, or an Ollama `/api/chat` call on another port than 11434, whose body failcore could not
read, was not recognised as an LLM call at all (its detection needs the body's shape): never metered, so
an unscoped token budget was walked past.

Bodies: `NaN` (JSON to Python's parser, which the upstream uses; failcore now reads it too) and a
trailing comma (no parser's: a body on such a path that cannot be read counts as the LLM call it may be,
and is charged an estimate)."""

from __future__ import annotations

import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.budget_helpers import token_budget
from tests.security.upstream import LoggingUpstream

PROMPT = "x" * 3000


def _body(path: str, ending: str) -> bytes:
    cap = '"max_tokens":4096,' if path == "/v1/messages" else ""
    return (
        f'{{"model":"claude-sonnet-4",{cap}"temperature":0.2,'
        f'"messages":[{{"role":"user","content":"{PROMPT}"}}]{ending}'
    ).encode()


@pytest.mark.parametrize("path", ["/v1/messages", "/api/chat"])
@pytest.mark.parametrize("ending", [',"seed":NaN}', ",}"])
def test_an_unread_body_on_an_llm_path_is_charged(
    path: str, ending: str, start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    proxy = start_proxy(policy_file(token_budget(50)))
    url = f"{plain_logging_upstream.url}{path}"  # 127.0.0.1 on an ephemeral port: no known host or port
    headers = {"content-type": "application/json"}
    with proxied_client(proxy) as client:
        statuses = [
            client.post(url, content=_body(path, ending), headers=headers).status_code for _ in range(3)
        ]
    proxy.flush()
    # The upstream's answer reports no usage: the first call is charged its estimate (over 3000 tokens
    # of prompt), which spends the 50-token budget.
    assert statuses == [200, 429, 429]
    assert plain_logging_upstream.received_bytes().count(f"POST {path}".encode()) == 1

    first, *blocked = network_events(read_tape(tmp_path / "tape"))
    assert first["llm"] is not None
    assert first["llm"]["budget_estimate"]["input_tokens"] >= len(PROMPT)
    assert [(e["decision"], e["rule"]) for e in blocked] == [("BLOCK", "budget:tokens")] * 2
