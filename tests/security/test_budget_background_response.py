"""Held attack: a Responses API call made with `background: true` answers `queued` without usage; its
result (and usage) comes with `GET /v1/responses/{id}`, which was never charged. The fetch is charged
now, once per response however often it is polled, as JSON or as its event stream (`?stream=true`)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.budget_helpers import token_budget
from tests.security.upstream import LoggingUpstream

USAGE = {"input_tokens": 1000, "output_tokens": 1000, "total_tokens": 2000}


def _response(rid: str, status: str, usage: dict | None) -> dict:
    output = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done"}]}]
    return {
        "id": rid,
        "object": "response",
        "status": status,
        "background": True,
        "model": "gpt-4o-2024-08-06",
        "output": output if status == "completed" else [],
        "usage": usage,
    }


def _json(doc: dict) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return 200, [(b"content-type", b"application/json")], json.dumps(doc).encode()


def _events(doc: dict) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    created = {"type": "response.created", "sequence_number": 0, "response": {**doc, "status": "in_progress"}}
    done = {"type": "response.completed", "sequence_number": 1, "response": doc}
    body = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in (created, done))
    return 200, [(b"content-type", b"text/event-stream")], body.encode()


@pytest.mark.parametrize("framing", ["json", "sse"])
def test_background_response_is_charged_when_fetched(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path, framing: str
) -> None:
    up = plain_logging_upstream
    proxy = start_proxy(policy_file(token_budget(3000)))
    statuses = []
    with proxied_client(proxy) as client:
        for n in range(3):
            rid = f"resp_{n}"
            up.respond_with = _json(_response(rid, "queued", None))
            created = client.post(
                f"{up.url}/v1/responses", json={"model": "gpt-4o", "input": "hi", "background": True}
            )
            statuses.append(created.status_code)
            if created.status_code != 200:
                break
            done = _response(rid, "completed", USAGE)
            up.respond_with = _json(done) if framing == "json" else _events(done)
            query = "?stream=true" if framing == "sse" else ""
            # Polled twice: the second fetch of the same response must not be charged again.
            statuses += [client.get(f"{up.url}/v1/responses/{rid}{query}").status_code for _ in range(2)]
    proxy.flush()
    # resp_0: 2000 charged once (a double charge would refuse resp_1's POST); resp_1: 4000 >= 3000.
    assert statuses == [200, 200, 200, 200, 200, 429, 429]
    seen = up.received_bytes()
    assert seen.count(b"POST /v1/responses") == 2
    assert seen.count(b"GET /v1/responses/resp_0") == 2 and seen.count(b"GET /v1/responses/resp_1") == 1

    events = network_events(read_tape(tmp_path / "tape"))
    fetched = [e for e in events if e["method"] == "GET" and e["decision"] == "ALLOW"]
    assert len(fetched) == 3
    assert all(e["llm"]["api"] == "responses" and e["llm"]["usage"]["total_tokens"] == 2000 for e in fetched)
    refused = [e for e in events if e["decision"] == "BLOCK"]
    assert [(e["method"], e["rule"]) for e in refused] == [
        ("GET", "budget:tokens"),
        ("POST", "budget:tokens"),
    ]
