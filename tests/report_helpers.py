"""Synthetic and recorded events for the report's tests (tests/test_report.py, test_report_cache.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

# A credential-shaped value inside a recorded body: the report shows bodies only when asked.
SECRET = "sk-live-0123456789abcdef0123456789abcdef"


def network(seq_hint: int, run: str, **kw: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "kind": "network",
        "v": 1,
        "run": run,
        "flow": f"flow-{seq_hint}",
        "ts_start": 1_700_000_000.0 + seq_hint,
        "ts_end": 1_700_000_000.5 + seq_hint,
        "egress": "NETWORK",
        "action": "http.request",
        "target": {"host": "api.example.test", "port": 443, "scheme": "https"},
        "method": "POST",
        "path": "/v1/chat/completions",
        "summary": "POST /v1/chat/completions",
        "decision": "ALLOW",
        "rule": "allow-llm",
        "reason": "the provider",
        "would_block": False,
        "outcome": "ok",
        "fail_reason": None,
        "error": None,
        "status": 200,
        "latency_ms": 120.0 + seq_hint,
        "ttfb_ms": 10.0,
        "bytes_out": 100,
        "bytes_in": 1000,
        "request": {
            "http_version": "HTTP/1.1",
            "headers": [["authorization", "Bearer [redacted hmac-sha256:7e29950feec5b09051b2795b]"]],
            "body": {
                "size": 60,
                "cap": 1 << 20,
                "sha256": "0" * 64,
                "sha256_of": "decoded",
                "truncated": False,
                "text": f'{{"api_key": "{SECRET}"}}',
            },
        },
        "response": None,
        "stream": None,
    }
    ev.update(kw)
    return ev


def llm_block(model: str, tokens_in: int | None, tokens_out: int | None, usd: float | None) -> dict[str, Any]:
    known = tokens_in is not None
    return {
        "provider": "openai",
        "api": "chat.completions",
        "request_model": model,
        "response_model": model,
        "stream": False,
        "usage": {
            "known": known,
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "total_tokens": (tokens_in or 0) + (tokens_out or 0) if known else None,
        },
        "finish_reason": "stop",
        "tool_calls": 0,
        "cost": {"usd": usd, "reason": None if usd is not None else "unpriced_model"},
    }


def lifecycle(kind: str, run: str, ts: float, **detail: Any) -> dict[str, Any]:
    return {"kind": kind, "v": 1, "run": run, "ts_start": ts, "ts_end": ts, "detail": detail}



CASSETTES = Path(__file__).parent / "data" / "openllmetry" / "report-cassettes.jsonl"


def cassette_event(seq_hint: int, run: str, exchange: dict[str, Any], api: str) -> dict[str, Any]:
    """A network event holding a real recorded exchange's bodies as the recorder stores them."""
    host, _, port = exchange["host"].rpartition(":")

    def body(text: str) -> dict[str, Any]:
        size = len(text.encode())
        return {"size": size, "cap": 1 << 20, "sha256": "0" * 64, "sha256_of": "decoded", "truncated": False}

    content_type = exchange["response_headers"].get("content-type") or ""
    return network(
        seq_hint,
        run,
        target={"host": host, "port": int(port), "scheme": "https"},
        path=exchange["path"],
        summary=f"POST {exchange['path']}",
        request={
            "http_version": "HTTP/1.1",
            "headers": [["content-type", "application/json"]],
            "body": body(exchange["request_body"]) | {"text": exchange["request_body"]},
        },
        response={
            "http_version": "HTTP/1.1",
            "reason": "OK",
            "headers": [["content-type", content_type]],
            "body": body(exchange["response_body"]) | {"text": exchange["response_body"]},
        },
        llm=llm_block("m", 1, 1, 0.001) | {"api": api, "stream": "event-stream" in content_type},
    )


# What a person reads in each recorded exchange (taken from the cassettes by eye, not by the code).
CASSETTE_EXPECTED = {
    "test_agent_with_tools.yaml#0": ["Add 5 and 7", "add_numbers", '{"a":5,"b":7}'],
    "test_agent_with_tools.yaml#1": ["12", "The sum of 5 and 7 is 12."],
    "test_agent_arun_streaming_with_tools.yaml#0": [
        "A streaming agent with tools",
        "What is 6 times 7?",
        "multiply",
        '{"a":6,"b":7}',
    ],
    "test_agent_name_propagation_to_agent_spans.yaml#1": [
        "You are a helpful assistant that answers all questions",
        "What is AI?",
        "**AI** stands for **Artificial Intelligence**.",
    ],
    "test_router_analytics_complete_workflow.yaml#0": [
        "Can you analyze the sales data from last quarter and generate a report?",
        "transfer_to_analytics_agent",
    ],
    "test_anthropic_tools_history_legacy.yaml#0": [
        "What is the weather and current time in San Francisco?",
        "Sunny and 65 degrees Fahrenheit",
        '"timezone": "America/Los_Angeles"',
    ],
    "test_anthropic_tools_streaming_legacy.yaml#0": [
        '{"location": "San Francisco, CA", "unit": "celsius"}',
        '{"timezone": "America/Los_Angeles"}',
    ],
    "test_anthropic_message_stream_manager_legacy.yaml#0": [
        "Tell me a joke about OpenTelemetry",
        "Why did the developer love OpenTelemetry?",
    ],
}


def load_cassettes() -> list[tuple[dict[str, Any], str, list[str]]]:
    out = []
    for line in CASSETTES.read_text().splitlines():
        exchange = orjson.loads(line)
        api = "messages" if "/v1/messages" in exchange["path"] else exchange["path"].rsplit("/", 1)[-1]
        api = {"completions": "chat_completions"}.get(api, api)
        key = next(k for k in CASSETTE_EXPECTED if exchange["id"].endswith(k))
        out.append((exchange, api, CASSETTE_EXPECTED[key]))
    assert len(out) == len(CASSETTE_EXPECTED)
    return out
