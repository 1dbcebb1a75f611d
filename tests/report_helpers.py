"""Synthetic and recorded events for the report's tests (tests/test_report.py, test_report_cache.py)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from failcore.report import countworker
from failcore.tape.keys import load_or_create_signing_key
from failcore.tape.writer import TapeWriter

# A credential-shaped value inside a recorded body: the report shows bodies only when asked.
SECRET = "sk-live-0123456789abcdef0123456789abcdef"
MASKED = "sk-l…cdef"


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


RUNS = ("run-alpha", "run-beta", "run-gamma")
HOSTS = [f"h{n}.example.test" for n in range(9)]


def varied_event(rng: random.Random, run: str, n: int) -> dict[str, Any]:
    """One event of many shapes: exchanges (blocked, warned, failed, with warnings, DLP hits, LLM
    usage), connections, websocket messages, internal errors and the runtime's tool calls and effects."""
    ts = 1_700_000_000.0 + n * 0.37
    pick = rng.random()
    if pick < 0.08:
        return {
            "kind": rng.choice(("tool", "fs", "exec", "connect")),
            "v": 2,
            "run": run,
            "ts_start": ts,
            "ts_end": ts + 0.01,
            "action": "call",
            "tool": {"name": rng.choice(("search", "write_file"))},
            "decision": rng.choice(("ALLOW", "WARN", "BLOCK")),
            "outcome": rng.choice(("ok", "BLOCKED", "FAIL")),
            "rule": rng.choice(("r1", "r2")),
            "latency_ms": rng.uniform(0, 50),
            "warnings": [{"code": "w", "message": f"tool warning {n}"}] if rng.random() < 0.3 else [],
        }
    if pick < 0.11:
        return {"kind": "internal_error", "v": 1, "run": run, "ts_start": ts, "detail": {"error": f"e{n}"}}
    if pick < 0.14:
        return {"kind": "websocket", "v": 1, "run": run, "ts_start": ts, "direction": "up"}
    decision = rng.choice(("ALLOW", "ALLOW", "ALLOW", "WARN", "BLOCK"))
    outcome = "BLOCKED" if decision == "BLOCK" else rng.choice(("ok", "ok", "ok", "FAIL"))
    host = rng.choice(HOSTS)
    ev = network(
        n,
        run,
        ts_start=ts,
        ts_end=ts + 0.2,
        flow=f"flow-{run}-{n}",
        target={"host": host, "port": rng.choice((443, 8443)), "scheme": "https"},
        action=rng.choice(("http.request",) * 9 + ("tls.handshake",)),
        decision=decision,
        outcome=outcome,
        fail_reason="upstream_status" if outcome == "FAIL" else None,
        rule=f"rule-{decision.lower()}",
        latency_ms=round(rng.uniform(1, 900), rng.choice((0, 1, 3, 7))),
        bytes_out=rng.randrange(0, 5000),
        bytes_in=rng.randrange(0, 50000),
        response={
            "http_version": "HTTP/1.1",
            "headers": [["content-type", "application/json"]],
            "body": {
                "size": 40,
                "cap": 1 << 20,
                "sha256": "0" * 64,
                "sha256_of": "decoded",
                "truncated": False,
                "text": f'{{"answer": "reply {n}"}}',
            },
        },
    )
    if rng.random() < 0.5:
        ev["llm"] = llm_block(
            "gpt-4o-mini", rng.randrange(1, 900), rng.randrange(1, 300), round(rng.random() / 1000, 8)
        )
    if rng.random() < 0.2:
        ev["warnings"] = [{"code": "x", "message": f"warning {n}.{i}"} for i in range(rng.randrange(1, 4))]
    if rng.random() < 0.15:
        ev["dlp"] = {
            "hits": [
                {"rule": "openai-key", "severity": "high", "preview": MASKED, "action": "BLOCK"}
                for _ in range(rng.randrange(1, 3))
            ]
        }
    return ev


def write_tape(tape: Path, confdir: Path, events: list[dict[str, Any]], segment_bytes: int = 24_000) -> None:
    key = load_or_create_signing_key(confdir)
    with TapeWriter(
        tape, signing_key=key, run_id="writer", checkpoint_every=9, segment_bytes=segment_bytes
    ) as writer:
        for ev in events:
            assert writer.submit(ev)


def interleaved(seed: int, count: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events = [lifecycle("run_start", run, 1_699_999_999.0, policy="p.yaml", mode="observe") for run in RUNS]
    for n in range(count):
        run = RUNS[0] if rng.random() < 0.5 else rng.choice(RUNS)
        events.append(varied_event(rng, run, n))
    return events


def count_in_workers(monkeypatch: pytest.MonkeyPatch, cores: int = 2) -> None:
    """A cold report counts every sealed segment in worker processes, however small the tape."""
    monkeypatch.setattr(countworker, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(countworker, "usable_cores", lambda: cores)


def counted_in_workers(
    tmp_path: Path, confdir: Path, monkeypatch: pytest.MonkeyPatch, seed: int, count: int
) -> Path:
    """A tape of `interleaved(seed, count)` events, which a cold report counts in 2 worker processes."""
    count_in_workers(monkeypatch)
    tape = tmp_path / "tape"
    write_tape(tape, confdir, interleaved(seed, count))
    return tape
