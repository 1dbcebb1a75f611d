"""Held attack: a request body orjson rejects but a Python upstream accepts (FastAPI: vLLM, LiteLLM,
SGLang read it with `json.loads`) hides the model from a model-scoped budget.

`NaN`, `Infinity`, `1e999` and a lone `\\ud800` are JSON to Python, not to orjson: failcore lost the body,
so the call's model was unknown and a `model: llama*` budget neither checked nor charged it. Failcore now
reads such a body as the upstream does; a body no parser reads counts as an unknown model, which every
model-scoped budget counts (refused once the budget is spent)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.budget_helpers import completion, token_budget
from tests.security.upstream import LoggingUpstream

SCOPED = token_budget(50, 'scope: {model: "llama*"}')
CHAT = b'{"model":"llama-3-70b","messages":[{"role":"user","content":"hi"}],"temperature":0.2'


@pytest.mark.parametrize(
    "extra", [b',"seed":NaN}', b',"seed":Infinity}', b',"seed":1e999}', b',"user":"\\ud800"}']
)
def test_json_only_python_reads_keeps_its_model(
    extra: bytes, start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    body = CHAT + extra
    assert json.loads(body)["model"] == "llama-3-70b"  # what the upstream reads: valid to Python
    plain_logging_upstream.respond_with = completion(40)
    proxy = start_proxy(policy_file(SCOPED))
    url = f"{plain_logging_upstream.url}/v1/chat/completions"
    headers = {"content-type": "application/json"}
    with proxied_client(proxy) as client:
        statuses = [client.post(url, content=body, headers=headers).status_code for _ in range(3)]
    proxy.flush()
    assert statuses == [200, 200, 429]  # 40 + 40 tokens reach the 50-token budget
    assert plain_logging_upstream.received_bytes().count(b"POST /v1/chat/completions") == 2

    first, _, refused = network_events(read_tape(tmp_path / "tape"))
    assert first["llm"]["request_model"] == "llama-3-70b"
    assert first["llm"]["usage"]["total_tokens"] == 40
    assert (refused["decision"], refused["rule"]) == ("BLOCK", "budget:tokens")


def test_a_body_no_parser_reads_counts_against_a_model_scoped_budget(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """Once the budget is spent, a body failcore cannot read at all (a lenient upstream might) is
    refused: its model is unknown, so it may be the budget's."""
    unreadable = CHAT + b",}"  # a trailing comma: no JSON parser's, a lenient server's
    with pytest.raises(ValueError):
        json.loads(unreadable)
    plain_logging_upstream.respond_with = completion(60)
    proxy = start_proxy(policy_file(SCOPED))
    url = f"{plain_logging_upstream.url}/v1/chat/completions"
    headers = {"content-type": "application/json"}
    with proxied_client(proxy) as client:
        spent = client.post(url, content=CHAT + b"}", headers=headers)
        refused = [client.post(url, content=unreadable, headers=headers) for _ in range(2)]
    proxy.flush()
    assert spent.status_code == 200
    assert [r.status_code for r in refused] == [429, 429]
    received = plain_logging_upstream.received_bytes()
    assert received.count(b"POST /v1/chat/completions") == 1 and b",}" not in received

    _, *blocked = network_events(read_tape(tmp_path / "tape"))
    assert [(e["decision"], e["rule"]) for e in blocked] == [("BLOCK", "budget:tokens")] * 2
