"""A small compressed body that decodes past what the meter reads on the event loop (8 MiB) is read in
a worker thread (up to 64 MiB), not given up on: the request's model and the answer's usage are read.
Through the real proxy; bodies compressed here with brotli's own encoder."""

from __future__ import annotations

import json
from pathlib import Path

import brotli

from tests.helpers import network_events, read_tape
from tests.security.budget_helpers import token_budget
from tests.security.transfer_helpers import RawUpstream, through_proxy

NO_USAGE = b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": []}'


def _answer(body: bytes, coding: str | None = None) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    if coding:
        head += f"Content-Encoding: {coding}\r\n"
    return f"{head}Connection: close\r\n\r\n".encode() + body


def _post(authority: str, body: bytes, coding: str | None = None) -> bytes:
    head = (
        f"POST http://{authority}/v1/chat/completions HTTP/1.1\r\nHost: {authority}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    )
    if coding:
        head += f"Content-Encoding: {coding}\r\n"
    return f"{head}\r\n".encode() + body


def _one_call(answer: bytes, request: bytes, start_proxy, policy_file, tape: Path) -> dict:
    with RawUpstream(answer) as upstream:
        proxy = start_proxy(policy_file(token_budget(1 << 30)))
        assert through_proxy(proxy.port, _post(upstream.authority, *request))[:12] == b"HTTP/1.1 200"
        proxy.flush()
    (event,) = network_events(read_tape(tape))
    return event["llm"]


def test_a_small_compressed_prompt_decoding_past_8_mib_names_its_model(
    start_proxy, policy_file, tmp_path: Path
) -> None:
    """A 9 MiB prompt brotli'd to a few hundred bytes: its model was never read (unknown on the tape and
    to a model-scoped budget) and it was charged the 8 MiB read; now its model is read, and it is charged
    its size (a token per byte: the answer reports no usage)."""
    prompt = {"model": "gpt-4o", "messages": [{"role": "user", "content": " " * (9 << 20)}]}
    body = json.dumps(prompt, separators=(",", ":")).encode()
    wire = brotli.compress(body)
    assert len(wire) < 1000
    llm = _one_call(_answer(NO_USAGE), (wire, "br"), start_proxy, policy_file, tmp_path / "tape")
    assert llm["request_model"] == "gpt-4o"
    assert llm["budget_estimate"]["input_tokens"] == len(body)


def test_a_small_compressed_answer_decoding_past_8_mib_is_metered_by_its_usage(
    start_proxy, policy_file, tmp_path: Path
) -> None:
    """A chat completion with 9 MiB of text brotli'd to a few hundred bytes: its usage was never read
    (charged an estimate of 8 MiB of output); now the usage it reports is."""
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " " * (9 << 20)},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18},
    }
    wire = brotli.compress(json.dumps(answer).encode())
    assert len(wire) < 8 * 1024
    request = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    llm = _one_call(_answer(wire, "br"), (request,), start_proxy, policy_file, tmp_path / "tape")
    assert llm["response_model"] == "gpt-4o-2024-08-06"
    assert llm["usage"]["known"] is True
    assert (llm["usage"]["input_tokens"], llm["usage"]["output_tokens"]) == (7, 11)
