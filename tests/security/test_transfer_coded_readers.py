"""Attack: a body failcore reads for a decision, coded by a *transfer* coding (`Transfer-Encoding: gzip,
chunked`), which mitmproxy forwards still coded: the DLP guard undid it (failcore.evidence.body_encoding),
the other readers read only Content-Encoding and saw gzip bytes.

- a `_method=DELETE` form (or JSON) field passed a `method: DELETE` BLOCK rule;
- a response's usage went unread (the call was charged an estimate without its tokens);
- a request's prompt was weighed by its compressed size when the upstream reported no usage.

Which upstreams read such a request (measured 2026-12-01 with what this machine has): uvicorn/h11 and
tornado answer 400, nginx 501; werkzeug reads no body; aiohttp and node's http undo the chunked framing
and hand the application the gzip bytes. None inflates it, so these are for a receiver that undoes the
coding as RFC 9112 6.1 asks of one that accepts it: failcore now reads what such a receiver reads (the
stricter verdict: the bytes as sent are still judged too). Each through the real proxy, asserting what
reached the upstream and what the tape holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import network_events, read_tape
from tests.security.budget_helpers import completion, token_budget
from tests.security.transfer_helpers import (
    RawUpstream,
    through_proxy,
    transfer_coded_answer,
    transfer_coded_request,
)

NO_DELETE = (
    "version: 1\nmode: enforce\ndefault: ALLOW\nrules:\n  - {id: no-delete, method: DELETE, action: BLOCK}\n"
)
OVERRIDES = {
    "application/x-www-form-urlencoded": b"title=marker&_method=DELETE",
    "application/json": b'{"title": "marker", "_method": "DELETE"}',
}
PLAIN_OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
@pytest.mark.parametrize("content_type", sorted(OVERRIDES))
def test_a_method_override_under_a_transfer_coding_is_judged(
    start_proxy, policy_file, tmp_path: Path, coding: str, content_type: str
) -> None:
    body = OVERRIDES[content_type]
    with RawUpstream(PLAIN_OK) as upstream:
        proxy = start_proxy(policy_file(NO_DELETE))
        answer = through_proxy(
            proxy.port, transfer_coded_request(upstream.authority, "/repo", coding, body, content_type)
        )
        proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"x-failcore-rule: no-delete" in answer.lower()
    assert upstream.received_bytes() == b"", "nothing of the request reached the upstream"
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"], event["outcome"]) == ("BLOCK", "no-delete", "BLOCKED")
    recorded = event["request"]["body"]
    assert recorded["text"] == body.decode() and recorded["sha256_of"] == "decoded"


def test_a_method_override_past_the_decode_limit_is_judged_as_any_method_a_rule_names(
    start_proxy, policy_file, tmp_path: Path
) -> None:
    """A JSON body that inflates past the 8 MiB failcore reads on the event loop, its `_method` at the
    end (Laravel reads a JSON body whole): it cannot be read whole, so it is judged as each method a
    rule names, and refused. (9 MiB of padding gzip'd to ~9 KB.)"""
    body = b'{"pad": "' + b" " * (9 << 20) + b'", "_method": "DELETE"}'
    with RawUpstream(PLAIN_OK) as upstream:
        proxy = start_proxy(policy_file(NO_DELETE))
        answer = through_proxy(
            proxy.port, transfer_coded_request(upstream.authority, "/repo", "gzip", body, "application/json")
        )
        proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"x-failcore-rule: no-delete" in answer.lower()
    assert upstream.received_bytes() == b""
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"], event["outcome"]) == ("BLOCK", "no-delete", "BLOCKED")


def _sse_with_usage(total_tokens: int) -> bytes:
    half = total_tokens // 2
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
    }
    usage = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-2024-08-06",
        "choices": [],
        "usage": {
            "prompt_tokens": half,
            "completion_tokens": total_tokens - half,
            "total_tokens": total_tokens,
        },
    }
    return f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode()


ANSWERS = {
    "application/json": completion(2000)[2],
    "text/event-stream": _sse_with_usage(2000),
}
CHAT = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()


def _chat(authority: str) -> bytes:
    return (
        f"POST http://{authority}/v1/chat/completions HTTP/1.1\r\nHost: {authority}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(CHAT)}\r\nConnection: close\r\n\r\n"
    ).encode() + CHAT


@pytest.mark.parametrize("content_type", sorted(ANSWERS))
def test_a_usage_under_a_transfer_coding_is_metered(
    start_proxy, policy_file, tmp_path: Path, content_type: str
) -> None:
    """Three calls under a 3000-token budget, each answered 2000 tokens in a gzip transfer coding: two
    are charged their 2000 tokens, the third is refused and never leaves."""
    with RawUpstream(transfer_coded_answer(content_type, ANSWERS[content_type])) as upstream:
        proxy = start_proxy(policy_file(token_budget(3000)))
        answers = [through_proxy(proxy.port, _chat(upstream.authority)) for _ in range(3)]
        proxy.flush()
    assert [a[:12] for a in answers] == [b"HTTP/1.1 200", b"HTTP/1.1 200", b"HTTP/1.1 429"]
    assert upstream.received_bytes().count(b"POST ") == 2
    events = network_events(read_tape(tmp_path / "tape"))
    assert [(e["decision"], e["rule"]) for e in events][2] == ("BLOCK", "budget:tokens")
    for event in events[:2]:
        assert event["llm"]["usage"]["known"] is True
        assert event["llm"]["usage"]["total_tokens"] == 2000
        assert event["response"]["body"]["sha256_of"] == "decoded"


PROMPT = "x" * 3000


def test_a_prompt_under_a_transfer_coding_is_weighed_decoded(
    start_proxy, policy_file, tmp_path: Path
) -> None:
    """The upstream reports no usage: the call is charged an estimate from the prompt it was sent,
    3000 characters (gzip'd to a few dozen bytes: charged ~100 tokens), which spends a 1000-token
    budget."""
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}]}).encode()
    with RawUpstream(PLAIN_OK) as upstream:
        proxy = start_proxy(policy_file(token_budget(1000)))
        request = transfer_coded_request(
            upstream.authority, "/v1/chat/completions", "gzip", body, "application/json"
        )
        answers = [through_proxy(proxy.port, request) for _ in range(2)]
        proxy.flush()
    assert [a[:12] for a in answers] == [b"HTTP/1.1 200", b"HTTP/1.1 429"]
    assert upstream.received_bytes().count(b"POST ") == 1
    first, refused = network_events(read_tape(tmp_path / "tape"))
    assert first["llm"]["request_model"] == "gpt-4o"
    assert first["llm"]["budget_estimate"]["input_tokens"] >= len(PROMPT)
    assert first["request"]["body"]["decoded_size"] == len(body)
    assert (refused["decision"], refused["rule"]) == ("BLOCK", "budget:tokens")


def test_a_request_under_a_transfer_coding_failcore_cannot_undo_names_an_unknown_model(
    start_proxy, policy_file, tmp_path: Path
) -> None:
    """`compress, chunked` over bytes that are no LZW (transfer_helpers): failcore cannot read the
    model, so the call is charged as one of an unknown model, which a budget scoped to any model counts
    (as a Content-Encoding that does not decode). (The answer names no model: one it names is what the
    call is charged as.)"""
    scoped = token_budget(3000, 'scope: {model: "claude*"}')
    answer = json.loads(completion(2000)[2])
    del answer["model"]
    with RawUpstream(_ok(json.dumps(answer).encode())) as upstream:
        proxy = start_proxy(policy_file(scoped))
        request = transfer_coded_request(
            upstream.authority, "/v1/chat/completions", "compress", CHAT, "application/json"
        )
        answers = [through_proxy(proxy.port, request) for _ in range(3)]
        proxy.flush()
    assert [a[:12] for a in answers] == [b"HTTP/1.1 200", b"HTTP/1.1 200", b"HTTP/1.1 429"]
    assert upstream.received_bytes().count(b"POST ") == 2
    events = network_events(read_tape(tmp_path / "tape"))
    assert [e["llm"]["request_model"] for e in events[:2]] == [None, None]
    assert (events[2]["decision"], events[2]["rule"]) == ("BLOCK", "budget:tokens")


def _ok(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return f"{head}Connection: close\r\n\r\n".encode() + body
