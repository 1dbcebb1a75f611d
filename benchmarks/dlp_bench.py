"""DLP throughput on a ~1 MB OpenAI-style chat request (median of 9 runs per backend and rule set), and
the CPU one scan of a short clean text costs (a URL, a header block, a 1 KB JSON body: what an exchange's
evidence scan goes through most).

Measured in CPU time (`time.process_time`): the figure is what one scan costs this process, not how
busy the machine is. Target (issue 8): >= 100 MB/s, with the built-in rules and with the gitleaks import.

Run: PYTHONPATH=. .venv/bin/python benchmarks/dlp_bench.py
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

from failcore.dlp import DlpEngine, builtin_rules, import_gitleaks
from failcore.dlp.regex_backend import hyperscan_available

GITLEAKS_TOML = Path(__file__).resolve().parent.parent / "failcore" / "data" / "gitleaks" / "gitleaks.toml"
TARGET_BYTES = 1_000_000
RUNS = 9

_WORDS = [
    "the",
    "model",
    "should",
    "read",
    "the",
    "configuration",
    "file",
    "and",
    "summarise",
    "what",
    "the",
    "service",
    "does",
    "before",
    "it",
    "changes",
    "anything",
    "please",
    "keep",
    "the",
    "answer",
    "short",
    "and",
    "explain",
    "which",
    "function",
    "handles",
    "retries",
    "the",
    "token",
    "budget",
    "for",
    "this",
    "request",
    "is",
    "limited",
    "so",
    "avoid",
    "repeating",
    "the",
    "whole",
    "file",
    "again",
    "thanks",
]
_CODE = """def load_settings(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if "timeout" not in data:
        data["timeout"] = 30
    return {key: value for key, value in data.items() if not key.startswith("_")}
"""


def _fake_secrets() -> list[str]:
    # Assembled at runtime so this file does not look like it leaks anything.
    return [
        "export OPENAI_API_KEY=" + "sk-" + "proj-" + "Q7" * 40,
        "token " + "ghp_" + "x9Yz" * 9,
        "AWS " + "AKIA" + "QWERTYUIOPASDFGH",
        "card 4111 1111 1111 1111 on file",
    ]


def build_chat_body(target: int = TARGET_BYTES, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are a careful coding assistant."}]
    secrets = _fake_secrets()
    size = 0
    while size < target:
        if rng.random() < 0.3:
            content = _CODE * rng.randint(1, 3)
        else:
            content = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(40, 200))) + "."
        if secrets and rng.random() < 0.01:
            content += " " + secrets.pop()
        message = {"role": rng.choice(("user", "assistant")), "content": content}
        messages.append(message)
        size += len(content) + 40
    for leftover in secrets:
        messages.append({"role": "user", "content": leftover})
    return json.dumps({"model": "gpt-4o", "messages": messages}).encode("utf-8")


# The short texts an exchange's evidence scan goes through besides its bodies (the throughput
# benchmark's exchange: its URL, header names, header block, reason, and a 1 KB JSON body): all clean.
SHORT_TEXTS: tuple[bytes, ...] = (
    b"http://127.0.0.1:8080/echo",
    b"header\ncontent-length\ncontent-type",
    b"header: qvalue\ncontent-length: 1024\ncontent-type: application/json\n",
    b"no rule matched; default action ALLOW",
    json.dumps({"id": "chatcmpl-bench", "model": "gpt-4o-mini", "content": "lorem ipsum " * 80}).encode(),
)
SHORT_RUNS = 2000


def measure_short(engine: DlpEngine) -> float:
    """CPU µs per scan of a short clean text (the median text of SHORT_TEXTS, best of 5 passes)."""
    per_text = []
    for text in SHORT_TEXTS:
        best = float("inf")
        for _ in range(5):
            started = time.process_time()
            for _ in range(SHORT_RUNS):
                engine.scan(text)
            best = min(best, time.process_time() - started)
        per_text.append(best / SHORT_RUNS * 1e6)
    return statistics.median(per_text)


def measure(engine: DlpEngine, body: bytes) -> tuple[float, int]:
    timings: list[float] = []
    hits = 0
    for _ in range(RUNS):
        started = time.process_time()
        hits = len(engine.scan(body))
        timings.append(time.process_time() - started)
    return len(body) / statistics.median(timings) / 1e6, hits


def main() -> int:
    body = build_chat_body()
    print(f"body: {len(body) / 1e6:.2f} MB, {RUNS} runs, median")
    backends = ["re2"] + (["hyperscan"] if hyperscan_available() else [])
    gitleaks = import_gitleaks(GITLEAKS_TOML)
    rule_sets = {
        "builtin": builtin_rules(),
        "builtin+gitleaks": builtin_rules() + gitleaks.rules,
    }
    # The Hyperscan fast path (the default) and the plain path it must agree with, in the same session.
    variants = [(backend, True) for backend in backends] + (
        [("hyperscan", False)] if hyperscan_available() else []
    )
    for backend, fast in variants:
        for label, rules in rule_sets.items():
            started = time.process_time()
            engine = DlpEngine(rules, backend=backend, salt=b"bench", fast_paths=fast)
            build = time.process_time() - started
            rate, hits = measure(engine, body)
            short = measure_short(engine)
            name = backend if fast else "hyperscan (plain path)"
            print(
                f"{name:>22} {label:<17} rules={len(rules):<4} build={build:5.2f}s "
                f"{rate:8.1f} MB/s hits={hits}  short clean text {short:5.1f} µs/scan"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
