"""LlmMeter through mitmproxy's addon harness, on recorded real provider exchanges (openllmetry's
cassettes, tests/data/conformance/llm): the usage it meters is what the provider reported, as read by
tests/llm_replay.reported_usage, which shares no code with failcore's parser."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from failcore.proxy.gate import PolicyGate
from failcore.proxy.meter import LlmMeter
from tests.addon_harness import Harness, concerns
from tests.llm_replay import load_exchanges, reported_usage


def _headers(exchange: dict[str, Any]) -> dict[str, Any]:
    raw = exchange["response_headers"]
    return raw if isinstance(raw, dict) else ast.literal_eval(raw)


def whole_json_exchanges(host: str, count: int) -> list[dict[str, Any]]:
    """The first `count` recorded non-streaming JSON exchanges with `host` that report usage."""
    found = []
    for exchange in load_exchanges():
        content_type = (_headers(exchange).get("content-type") or "").lower()
        if (
            exchange["host"] == host
            and content_type.startswith("application/json")
            and exchange["status"] == 200
            and reported_usage(exchange) is not None
        ):
            found.append(exchange)
        if len(found) == count:
            break
    return found


EXCHANGES = whole_json_exchanges("api.openai.com:443", 4) + whole_json_exchanges("api.anthropic.com:443", 3)


def replay(h: Harness, exchange: dict[str, Any]) -> http.HTTPFlow:
    host, port = exchange["host"].rsplit(":", 1)
    req = tutils.treq(
        host=host,
        port=int(port),
        scheme=b"https",
        method=exchange["method"].encode(),
        path=exchange["path"].encode(),
        headers=http.Headers([(b"content-type", b"application/json")]),
        content=exchange["request_body"].encode(),
    )
    flow = tflow.tflow(req=req)
    h.hooks(flow, "requestheaders", "request")
    flow.response = tutils.tresp(
        status_code=exchange["status"],
        headers=http.Headers([(b"content-type", b"application/json")]),
        content=exchange["response_body"].encode(),
    )
    h.hooks(flow, "responseheaders", "response")
    return flow


def test_the_cassettes_hold_both_providers() -> None:
    hosts = [e["host"] for e in EXCHANGES]
    assert hosts.count("api.openai.com:443") == 4 and hosts.count("api.anthropic.com:443") == 3


@pytest.mark.parametrize("exchange", EXCHANGES, ids=lambda e: e["id"].rsplit("/", 1)[-1])
def test_metered_usage_is_what_the_provider_reported(exchange: dict[str, Any], confdir: Path) -> None:
    expected = reported_usage(exchange)
    assert expected is not None
    with concerns(PolicyGate, LlmMeter, confdir=confdir) as h:
        flow = replay(h, exchange)
        llm = h.state(flow).llm
        assert llm is not None and llm.call is not None, "not recognised as an LLM call"
        assert llm.provider == ("openai" if "openai" in exchange["host"] else "anthropic")
        metered = (llm.call.input_tokens, llm.call.output_tokens)
        assert metered == (expected.input_tokens, expected.output_tokens)
        assert h.session.internal_errors == 0


def test_a_plain_api_call_is_not_metered(confdir: Path) -> None:
    with concerns(PolicyGate, LlmMeter, confdir=confdir) as h:
        req = tutils.treq(host="api.example.com", port=443, scheme=b"https", path=b"/v1/users")
        flow = tflow.tflow(req=req)
        h.hooks(flow, "requestheaders", "request")
        flow.response = tutils.tresp(content=b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}')
        h.hooks(flow, "responseheaders", "response")
        assert h.state(flow).llm is None
