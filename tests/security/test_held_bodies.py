"""Attacks: a request body of unknown length (chunked) or over the streaming threshold used to stream
past the DLP and budget checks. Where such a check applies, the body is now held and decided whole.

Each test sends through the real proxy to a logging upstream, then asserts what reached it and what
the tape holds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK, tape_bytes
from tests.security.upstream import LoggingUpstream


def chunked(*parts: bytes) -> Iterator[bytes]:
    """A generator body: httpx sends it with Transfer-Encoding: chunked, no Content-Length."""
    yield from parts


def _blocked_event(tmp_path: Path, path: str) -> dict:
    [event] = [e for e in network_events(read_tape(tmp_path / "tape")) if e["path"] == path]
    return event


def test_a_chunked_upload_with_a_secret_is_blocked_before_it_leaves(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    body = chunked(b'{"note": "chunked-marker", ', f'"key": "{AWS_KEY_ID}"}}'.encode())
    with proxied_client(proxy) as client:
        response = client.post(f"{logging_upstream.url}/upload", content=body)
    proxy.flush()
    assert response.status_code == 403
    assert response.headers["x-failcore-rule"] == "dlp:aws-access-key-id"
    seen = logging_upstream.received_bytes()
    assert b"chunked-marker" not in seen and AWS_KEY_ID.encode() not in seen and b"/upload" not in seen
    event = _blocked_event(tmp_path, "/upload")
    assert (event["decision"], event["outcome"], event["rule"]) == (
        "BLOCK",
        "BLOCKED",
        "dlp:aws-access-key-id",
    )
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")


def test_a_chunked_llm_request_with_a_secret_is_blocked(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    doc = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"use {AWS_KEY_ID}"}]}
    wire = orjson.dumps(doc)
    with proxied_client(proxy) as client:
        response = client.post(
            f"{logging_upstream.url}/v1/chat/completions",
            content=chunked(wire[:20], wire[20:]),
            headers={"content-type": "application/json"},
        )
    proxy.flush()
    assert response.status_code == 403
    assert AWS_KEY_ID.encode() not in logging_upstream.received_bytes()
    assert logging_upstream.received_bytes() == b""
    assert _blocked_event(tmp_path, "/v1/chat/completions")["decision"] == "BLOCK"


def test_a_body_over_the_streaming_threshold_is_scanned_whole(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    # 2 MiB of filler (over the 1 MiB streaming threshold and the 1 MiB tape cap), the secret at the end.
    body = b"x" * (2 << 20) + f" {AWS_KEY_ID}".encode()
    with proxied_client(proxy) as client:
        allowed = client.post(f"{logging_upstream.url}/clean", content=b"y" * (2 << 20))
        response = client.post(f"{logging_upstream.url}/big", content=body)
    proxy.flush()
    assert allowed.status_code == 200, "a clean large upload still goes through (held, then forwarded)"
    assert response.status_code == 403
    seen = logging_upstream.received_bytes()
    assert seen.count(b"y" * 4096) > 0 and AWS_KEY_ID.encode() not in seen and b"/big" not in seen
    event = _blocked_event(tmp_path, "/big")
    assert (event["decision"], event["rule"]) == ("BLOCK", "dlp:aws-access-key-id")
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")


def test_a_held_body_declared_over_the_hold_limit_is_refused_with_413(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    proxy = start_proxy(
        policy_file(DLP_BLOCK),
        upstream_ca=logging_upstream.ca_path,
        sets=["failcore_hold_max=3000000", "failcore_stream_threshold=1000"],
    )
    with proxied_client(proxy) as client:
        response = client.post(f"{logging_upstream.url}/huge", content=b"z" * 3_000_001)
    proxy.flush()
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "failcore_body_too_large"
    assert logging_upstream.received_bytes() == b""
    event = _blocked_event(tmp_path, "/huge")
    assert (event["decision"], event["outcome"], event["rule"]) == ("BLOCK", "BLOCKED", "hold:too-large")


BUDGET = """
version: 1
mode: enforce
default: ALLOW
budgets:
  - id: one-call
    window: run
    {scope}
    limits: {{requests: 1}}
"""


def _budget_bypass(start_proxy, policy_file, up: LoggingUpstream, tmp_path: Path, scope: str) -> None:
    proxy = start_proxy(
        policy_file(BUDGET.format(scope=scope)),
        upstream_ca=up.ca_path,
        sets=[f"failcore_state_dir={tmp_path / 'state'}"],
    )
    doc = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    url = f"{up.url}/v1/chat/completions"
    headers = {"content-type": "application/json"}
    with proxied_client(proxy) as client:
        first = client.post(url, content=doc.replace(b"hi", b"first-call"), headers=headers)
        plain = client.post(url, content=doc.replace(b"hi", b"plain-call"), headers=headers)
        wire = doc.replace(b"hi", b"chunked-call")
        chunked_call = client.post(url, content=chunked(wire[:10], wire[10:]), headers=headers)
    proxy.flush()
    assert first.status_code == 200
    assert plain.status_code == 429
    assert chunked_call.status_code == 429, "a chunked call is held and counted like any other"
    seen = up.received_bytes()
    assert b"first-call" in seen and b"plain-call" not in seen and b"chunked-call" not in seen
    decisions = [(e["decision"], e["rule"]) for e in network_events(read_tape(tmp_path / "tape"))]
    assert decisions == [("ALLOW", None), ("BLOCK", "budget:one-call"), ("BLOCK", "budget:one-call")]


def test_a_chunked_call_does_not_bypass_an_exhausted_budget(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    _budget_bypass(start_proxy, policy_file, logging_upstream, tmp_path, "")


def test_a_chunked_call_does_not_bypass_an_exhausted_model_scoped_budget(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    _budget_bypass(start_proxy, policy_file, logging_upstream, tmp_path, 'scope: {model: "gpt-4o*"}')


def test_a_chunked_upload_off_llm_paths_does_not_bypass_an_exhausted_budget(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    proxy = start_proxy(
        policy_file(BUDGET.format(scope="")),
        upstream_ca=logging_upstream.ca_path,
        sets=[f"failcore_state_dir={tmp_path / 'state'}"],
    )
    with proxied_client(proxy) as client:
        first = client.post(f"{logging_upstream.url}/upload", content=b"first-upload")
        second = client.post(f"{logging_upstream.url}/upload", content=chunked(b"chunked-", b"upload"))
    proxy.flush()
    assert (first.status_code, second.status_code) == (200, 429)
    assert b"chunked-" not in logging_upstream.received_bytes()
    decisions = [(e["decision"], e["rule"]) for e in network_events(read_tape(tmp_path / "tape"))]
    assert decisions == [("ALLOW", None), ("BLOCK", "budget:one-call")]


def test_fail_closed_holds_a_chunked_body_until_every_check_has_run(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path, monkeypatch
) -> None:
    """With `fail_open: false`, a check that fails stops the request: a chunked LLM call used to be
    forwarded before the meter read it, so the failure came after the body had left."""
    import failcore.proxy.streamcopy as streamcopy  # (the meter's request reader)

    def broken(content: bytes | None) -> None:
        raise RuntimeError("meter broke")

    monkeypatch.setattr(streamcopy, "_request_json", broken)
    policy = "version: 1\nmode: observe\nfail_open: false\n"
    proxy = start_proxy(policy_file(policy), upstream_ca=logging_upstream.ca_path)
    wire = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "held-marker"}]})
    with proxied_client(proxy) as client:
        response = client.post(
            f"{logging_upstream.url}/v1/chat/completions",
            content=chunked(wire[:10], wire[10:]),
            headers={"content-type": "application/json"},
        )
    proxy.flush()
    assert response.status_code == 502
    assert response.headers["x-failcore-decision"] == "FAIL_CLOSED"
    assert b"held-marker" not in logging_upstream.received_bytes()
    errors = [e for e in read_tape(tmp_path / "tape") if e["kind"] == "internal_error"]
    assert errors and "meter broke" in errors[0]["error"]
