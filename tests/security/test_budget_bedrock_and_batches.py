"""Held attack: token-spending LLM endpoints failcore did not meter walked past a token budget: AWS
Bedrock's runtime (`/model/{id}/invoke`, `/invoke-with-response-stream`, `/converse`, `/converse-stream`)
and Anthropic's Message Batches (`POST /v1/messages/batches`, whose `params` are Messages requests).

Bedrock is recognised by its path on any host (bedrock-runtime.{region}.amazonaws.com or a gateway) and
charged the usage its answer reports (Converse: `usage.inputTokens`/`outputTokens`; InvokeModel of an
Anthropic model: Anthropic's `usage`), else an estimate (the streaming operations answer in AWS's binary
event stream). A batch is charged at submission: its body's bytes and every request's `max_tokens`.
Answers below are shaped as AWS's and Anthropic's API references give them."""

from __future__ import annotations

import json

import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.budget_helpers import token_budget
from tests.security.upstream import LoggingUpstream

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
JSON = [(b"content-type", b"application/json")]
CONVERSE = {
    "messages": [{"role": "user", "content": [{"text": "hi"}]}],
    "inferenceConfig": {"maxTokens": 4096},
}
INVOKE = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 4096,
    "messages": [{"role": "user", "content": "hi"}],
}
CONVERSE_ANSWER = {
    "output": {"message": {"role": "assistant", "content": [{"text": "hello"}]}},
    "stopReason": "end_turn",
    "usage": {"inputTokens": 25, "outputTokens": 15, "totalTokens": 40},
    "metrics": {"latencyMs": 300},
}
INVOKE_ANSWER = {
    "id": "msg_bdrk_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-sonnet-20240620",
    "content": [{"type": "text", "text": "hello"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 25, "output_tokens": 15},
}


def _run(proxy, upstream: LoggingUpstream, path: str, body: dict, n: int = 3) -> list[int]:
    url = f"{upstream.url}{path}"
    with proxied_client(proxy) as client:
        return [client.post(url, json=body).status_code for _ in range(n)]


@pytest.mark.parametrize(
    ("op", "body", "answer"),
    [("converse", CONVERSE, CONVERSE_ANSWER), ("invoke", INVOKE, INVOKE_ANSWER)],
)
def test_bedrock_usage_is_charged(
    op: str,
    body: dict,
    answer: dict,
    start_proxy,
    policy_file,
    plain_logging_upstream: LoggingUpstream,
    tmp_path,
) -> None:
    plain_logging_upstream.respond_with = (200, JSON, json.dumps(answer).encode())
    proxy = start_proxy(policy_file(token_budget(50)))
    path = f"/model/{MODEL}/{op}"
    statuses = _run(proxy, plain_logging_upstream, path, body)
    proxy.flush()
    assert statuses == [200, 200, 429]  # 40 + 40 tokens reach the 50-token budget
    assert plain_logging_upstream.received_bytes().count(f"POST {path}".encode()) == 2

    first, _, refused = network_events(read_tape(tmp_path / "tape"))
    assert (first["llm"]["provider"], first["llm"]["request_model"]) == ("bedrock", MODEL)
    assert (first["llm"]["usage"]["input_tokens"], first["llm"]["usage"]["output_tokens"]) == (25, 15)
    assert (refused["decision"], refused["rule"]) == ("BLOCK", "budget:tokens")


@pytest.mark.parametrize("op", ["invoke-with-response-stream", "converse-stream"])
def test_a_bedrock_stream_is_charged_an_estimate(
    op: str, start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """AWS's binary event stream carries no usage failcore reads: the 20 KB prompt is charged."""
    frames = b"\x00\x00\x00\x55\x00\x00\x00\x3b" + b"\x01" * 200  # event-stream framing stand-in
    plain_logging_upstream.respond_with = (
        200,
        [(b"content-type", b"application/vnd.amazon.eventstream")],
        frames,
    )
    proxy = start_proxy(policy_file(token_budget(50)))
    body = {**INVOKE, "messages": [{"role": "user", "content": "x" * 20000}]}
    path = f"/model/{MODEL}/{op}"
    statuses = _run(proxy, plain_logging_upstream, path, body)
    proxy.flush()
    assert statuses == [200, 429, 429]
    assert plain_logging_upstream.received_bytes().count(f"POST {path}".encode()) == 1

    first, *blocked = network_events(read_tape(tmp_path / "tape"))
    estimate = first["llm"]["budget_estimate"]
    assert estimate["input_tokens"] >= 20000 and estimate["output_tokens"] >= len(frames)
    assert [(e["decision"], e["rule"]) for e in blocked] == [("BLOCK", "budget:tokens")] * 2


def test_a_message_batch_is_charged_at_submission(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    created = {
        "id": "msgbatch_01",
        "type": "message_batch",
        "processing_status": "in_progress",
        "request_counts": {"processing": 2, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
    }
    plain_logging_upstream.respond_with = (200, JSON, json.dumps(created).encode())
    proxy = start_proxy(policy_file(token_budget(10_000)))
    params = {
        "model": "claude-3-5-sonnet-latest",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "hi"}],
    }
    batch = {"requests": [{"custom_id": f"r{i}", "params": params} for i in range(2)]}
    statuses = _run(proxy, plain_logging_upstream, "/v1/messages/batches", batch)
    proxy.flush()
    # Two requests that may each generate 4096 tokens: 8192 of the 10,000 tokens on submission, so the
    # second batch (which would make it 16,384) is admitted and the third refused.
    assert statuses == [200, 200, 429]
    assert plain_logging_upstream.received_bytes().count(b"POST /v1/messages/batches") == 2

    first, _, refused = network_events(read_tape(tmp_path / "tape"))
    assert first["llm"]["request_model"] == "claude-3-5-sonnet-latest"
    assert first["llm"]["budget_estimate"]["output_tokens"] >= 2 * 4096
    assert (refused["decision"], refused["rule"]) == ("BLOCK", "budget:tokens")
