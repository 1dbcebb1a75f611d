"""Generate a large synthetic tape (hash-chained, rotated like the writer's) for `failcore view` timing.

Run: PYTHONPATH=. .venv/bin/python benchmarks/gen_tape.py /tmp/big-tape --events 1000000
Events are ~1 KB network exchanges (headers, small JSON bodies, an `llm` block on most, a `dlp` block on
a few), spread over several runs, with the writer's 64 MiB segment rotation. Lines are built with
`encode_line` directly: the writer's queue, thread and signatures would only slow generation down.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import orjson

from failcore.tape.reader import GENESIS_PREV, segment_name
from failcore.tape.writer import encode_line

SEGMENT_BYTES = 64 * 2**20
HOSTS = ("api.openai.com", "api.anthropic.com", "pypi.org", "github.com", "evil.example")
DECISIONS = ("ALLOW",) * 16 + ("WARN", "WARN", "BLOCK")


def _network_event(rng: random.Random, run: str, n: int, ts: float) -> dict[str, object]:
    host = HOSTS[n % len(HOSTS)]
    decision = DECISIONS[rng.randrange(len(DECISIONS))]
    blocked = decision == "BLOCK"
    status = None if blocked else rng.choice((200, 200, 200, 200, 201, 404, 429, 500))
    failed = status is not None and status >= 500
    question = f"question {n}: " + " ".join(
        rng.choice(("why", "how", "report", "budget", "agent")) for _ in range(6)
    )
    request_body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]})
    response_body = orjson.dumps(
        {"id": f"chatcmpl-{n}", "choices": [{"message": {"content": "Echo: " + question}}]}
    )
    event: dict[str, object] = {
        "kind": "network",
        "v": 1,
        "run": run,
        "ts_start": ts,
        "ts_end": ts + 0.05,
        "flow": f"flow-{n:08d}",
        "egress": "NETWORK",
        "action": "http.request",
        "target": {"host": host, "port": 443, "scheme": "https"},
        "method": "POST",
        "path": f"/v1/chat/completions?n={n}",
        "summary": f"POST /v1/chat/completions?n={n}",
        "decision": decision,
        "rule": "allow-llm" if decision == "ALLOW" else f"rule-{decision.lower()}",
        "reason": "generated",
        "would_block": decision == "WARN",
        "outcome": "BLOCKED" if blocked else "FAIL" if failed else "ok",
        "fail_reason": "upstream_status" if failed else None,
        "error": None,
        "status": status,
        "latency_ms": round(rng.uniform(5, 900), 3),
        "ttfb_ms": round(rng.uniform(1, 50), 3),
        "bytes_out": len(request_body),
        "bytes_in": 0 if blocked else len(response_body),
        "request": {
            "http_version": "HTTP/1.1",
            "headers": [["Host", host], ["content-type", "application/json"], ["user-agent", "gen/1"]],
            "body": {
                "size": len(request_body),
                "cap": 1048576,
                "sha256": "0" * 64,
                "sha256_of": "decoded",
                "truncated": False,
                "text": request_body.decode(),
            },
        },
        "response": None
        if blocked
        else {
            "http_version": "HTTP/1.1",
            "headers": [["content-type", "application/json"], ["x-request-id", f"req_{n:012d}"]],
            "body": {
                "size": len(response_body),
                "cap": 1048576,
                "sha256": "0" * 64,
                "sha256_of": "decoded",
                "truncated": False,
                "text": response_body.decode(),
            },
        },
        "stream": None,
    }
    if host in ("api.openai.com", "api.anthropic.com") and not blocked:
        tokens_in, tokens_out = rng.randrange(20, 4000), rng.randrange(5, 800)
        event["llm"] = {
            "provider": "openai",
            "api": "chat",
            "request_model": "gpt-4o-mini",
            "response_model": "gpt-4o-mini",
            "stream": False,
            "finish_reason": "stop",
            "tool_calls": 0,
            "usage": {
                "known": True,
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "total_tokens": tokens_in + tokens_out,
            },
            "cost": {"usd": round(tokens_in * 1.5e-7 + tokens_out * 6e-7, 8), "reason": None},
        }
    if n % 97 == 0:
        event["dlp"] = {
            "hits": [
                {
                    "rule": "aws-access-key",
                    "severity": "high",
                    "category": "cloud",
                    "location": "request.body:/messages/0/content",
                    "preview": "AKIA…MPLE",
                    "fingerprint": "hmac-sha256:0123456789abcdef",
                    "action": decision,
                }
            ]
        }
    return event


class SegmentedSink:
    """Appends encoded lines, rotating to a new segment file at the writer's size limit."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.number = 0
        self.size = 0
        self.prev = GENESIS_PREV
        self.seq = 0
        self.file = None
        self._rotate()

    def _rotate(self) -> None:
        if self.file is not None:
            self.file.close()
        self.number += 1
        path = self.directory / segment_name(self.number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.file = os.fdopen(fd, "wb", buffering=1 << 20)
        self.size = 0

    def write(self, event: dict[str, object]) -> None:
        if self.size >= SEGMENT_BYTES:
            self._rotate()
        self.seq += 1
        line, self.prev = encode_line(self.prev, self.seq, orjson.dumps(event))
        assert self.file is not None
        self.file.write(line)
        self.size += len(line)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def generate(directory: Path, events: int, runs: int, seed: int) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    rng = random.Random(seed)
    sink = SegmentedSink(directory)
    per_run = max(1, events // runs)
    ts = 1_700_000_000.0
    written = 0
    for r in range(runs):
        run = f"run-bench-{r:03d}"
        count = per_run if r < runs - 1 else events - written
        sink.write(
            {
                "kind": "run_start",
                "v": 1,
                "run": run,
                "ts_start": ts,
                "ts_end": None,
                "detail": {"mode": "enforce", "policy": "bench.yaml"},
            }
        )
        for _ in range(count):
            ts += 0.01
            sink.write(_network_event(rng, run, written, ts))
            written += 1
        sink.write({"kind": "run_end", "v": 1, "run": run, "ts_start": ts, "ts_end": ts, "detail": {}})
    sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    started = time.perf_counter()
    generate(args.directory, args.events, args.runs, args.seed)
    total = sum(p.stat().st_size for p in args.directory.glob("seg-*.jsonl"))
    print(f"{args.events} events, {total / 2**20:.0f} MiB in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
