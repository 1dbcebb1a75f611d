"""Attack: a secret in the strings an event quotes besides headers, bodies and the URL.

The DLP pass masked bodies, headers and the URL, but an event also quotes the exchange elsewhere: the
LLM block's model names, finish reason and service tier (as the client and the provider wrote them),
mitmproxy's error about a malformed request ("Received unknown transfer-encoding header: b'…'") and
the method. A secret there was written to the tape in clear next to the masked body; so was an
echo of the exchange's own credential (a model name that repeats the Bearer token).

Each through the real proxy; each asserts what reached the logging upstream and what the tape holds."""

from __future__ import annotations

import json

import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.helpers import DLP_BLOCK, gitleaks_token, send_raw, tape_bytes
from tests.security.upstream import LoggingUpstream

AWS = gitleaks_token("aws-access-token")
PAT = gitleaks_token("github-pat")
# The agent's own credential (no DLP rule knows its shape): masked wherever the exchange echoes it.
CREDENTIAL = "agent-credential-" + "7f3a9c2e5b81"


def test_secrets_in_the_llm_fields_are_masked(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": f"gpt-4o {PAT}",
        "service_tier": f"tier {AWS}",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": f"stop {AWS}"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    logging_upstream.respond_with = (
        200,
        [(b"content-type", b"application/json")],
        json.dumps(answer).encode(),
    )
    proxy = start_proxy(policy_file("version: 1\nmode: observe\n"), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        first = client.post(
            f"{logging_upstream.url}/v1/chat/completions",
            json={"model": f"gpt-4o {AWS}", "messages": [{"role": "user", "content": "hi"}]},
        )
        echoed = client.post(
            f"{logging_upstream.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {CREDENTIAL}"},
            json={"model": CREDENTIAL, "messages": [{"role": "user", "content": "hi"}]},
        )
    proxy.flush()
    assert (first.status_code, echoed.status_code) == (200, 200)
    seen = logging_upstream.received_bytes()
    assert AWS.encode() in seen and CREDENTIAL.encode() in seen, "observe mode forwards the requests as sent"
    tape = tape_bytes(tmp_path / "tape")
    assert AWS.encode() not in tape and PAT.encode() not in tape and CREDENTIAL.encode() not in tape
    plain, echo = network_events(read_tape(tmp_path / "tape"))
    llm = plain["llm"]
    assert llm["request_model"].startswith("gpt-4o ") and llm["response_model"].startswith("gpt-4o ")
    assert llm["finish_reason"].startswith("stop ") and llm["service_tier"].startswith("tier ")
    locations = {h["location"] for h in plain["dlp"]["hits"]}
    assert {"llm.request_model", "llm.response_model", "llm.finish_reason", "llm.service_tier"} <= locations
    assert echo["llm"]["request_model"].startswith("[redacted ")


@pytest.mark.parametrize("first", ["malformed", "normal"])
def test_a_secret_in_a_malformed_request_is_masked_in_the_error(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path, first: str
) -> None:
    """`malformed`: the malformed requests are the proxy's very first, sent while its DLP rules may still
    be compiling (an exchange whose hook waited for them was lost when the proxy stopped: no event)."""
    proxy = start_proxy(policy_file(DLP_BLOCK))
    target = plain_logging_upstream.url
    if first == "normal":
        with proxied_client(proxy) as client:
            assert client.get(f"{target}/ready").status_code == 200
        plain_logging_upstream.reset()
    heads = [
        send_raw(
            proxy.port, f"GET {target}/te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {AWS}\r\n\r\n".encode()
        ),
        send_raw(
            proxy.port, f"GET {target}/cl HTTP/1.1\r\nHost: x\r\nContent-Length: 1 {AWS}\r\n\r\n".encode()
        ),
    ]
    proxy.stop()  # (the error of a malformed request may be recorded after its answer: stop drains it)
    assert all(head.startswith(b"HTTP/1.1 400") for head in heads), heads
    assert plain_logging_upstream.received_bytes() == b"", "nothing of the malformed requests went out"
    events = network_events(read_tape(tmp_path / "tape"))
    events = [e for e in events if e["path"] != "/ready"]
    errors = sorted(e["error"] for e in events if e.get("error"))
    assert len(errors) == 2
    assert "content-length" in errors[0] and "transfer-encoding" in errors[1]
    print([(h["location"], e["error"], e["request"]) for e in events for h in e["dlp"]["hits"]])
    assert all("error" in {h["location"] for h in e["dlp"]["hits"]} for e in events)
    assert AWS.encode() not in tape_bytes(tmp_path / "tape")
