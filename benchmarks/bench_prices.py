"""How long pricing one LLM call takes on the request path (compute_cost runs on the event loop when
a response ends): genai-prices cold (first call of a model) and warm (cached per model), against
failcore's own table formula. `python benchmarks/bench_prices.py`."""

from __future__ import annotations

import statistics
import sys
import time


def main() -> None:
    started = time.perf_counter()
    from failcore.llm import LlmCall, compute_cost, load_price_table
    from failcore.llm.prices import _genai_model

    imported = time.perf_counter() - started
    table = load_price_table(overrides={"my-model": {"input": 1, "output": 2}})
    models = [
        ("openai", "gpt-4o-2024-05-13"),
        ("openai", "gpt-4o-mini-2024-07-18"),
        ("anthropic", "claude-sonnet-4-5-20250929"),
        ("gemini", "gemini-2.5-pro"),
        ("groq", "llama3-8b-8192"),
        ("openai_compatible", "unknown-local-model"),
        ("test", "my-model"),
    ]
    calls = [
        LlmCall(
            provider=p,
            api="x",
            response_model=m,
            usage_known=True,
            input_tokens=250_000,
            cached_input_tokens=1000,
            output_tokens=500,
        )
        for p, m in models
    ]
    _genai_model.cache_clear()
    cold = []
    for call in calls:
        t = time.perf_counter()
        compute_cost(call, table)
        cold.append((time.perf_counter() - t) * 1e6)
    rounds = 2000
    warm: dict[str, float] = {}
    for call in calls:
        samples = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(rounds):
                compute_cost(call, table)
            samples.append((time.perf_counter() - t) / rounds * 1e6)
        warm[f"{call.provider}/{call.response_model}"] = statistics.median(samples)
    print(f"import failcore.llm (genai-prices included): {imported * 1000:.0f} ms")
    print(
        f"first call per model (cold lookup): median {statistics.median(cold):.0f} us, max {max(cold):.0f} us"
    )
    for name, micros in warm.items():
        print(f"  warm {name}: {micros:.1f} us/call")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
