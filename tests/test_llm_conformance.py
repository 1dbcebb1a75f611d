"""Conformance on real traffic: 546 exchanges recorded by traceloop/openllmetry against OpenAI, Azure,
Anthropic, Gemini, Groq, Mistral, DeepSeek, Ollama and OpenAI-compatible servers, replayed through the
real proxy with their recorded framing (mostly chunked + gzip without a Content-Length).

failcore's event for each call is compared with the usage the provider itself wrote in the body, read
by tests/llm_replay.reported_usage (not failcore's parser). Figures are in CONFORMANCE.md.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import network_events, read_tape
from tests.llm_replay import (
    RedirectToReplay,
    ReplayUpstream,
    Reported,
    load_exchanges,
    reported_usage,
)

WORKERS = 4


@dataclass
class Figures:
    exchanges: int = 0
    llm_events: int = 0
    reporting: int = 0
    exact: int = 0
    known_wrong: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    priceable: int = 0
    priced: int = 0
    unpriced_known_to_genai: list[str] = field(default_factory=list)
    known_unpriced: Counter = field(default_factory=Counter)
    priced_as_genai: int = 0
    price_differs: list[str] = field(default_factory=list)
    by_framing: Counter = field(default_factory=Counter)
    exact_by_framing: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        lines = [
            f"exchanges {self.exchanges}, LLM events {self.llm_events}, reporting usage {self.reporting}",
            f"tokens exact: {_pct(self.exact, self.reporting)}; known with wrong numbers: "
            f"{len(self.known_wrong)}; usage missed: {len(self.missed)}",
            f"priced where genai-prices knows the model: {_pct(self.priced, self.priceable)}, "
            f"at genai-prices' own figure: {_pct(self.priced_as_genai, self.priceable)}; "
            f"known usage left unpriced: {sum(self.known_unpriced.values())} {dict(self.known_unpriced)}",
        ]
        for framing, count in sorted(self.by_framing.items()):
            lines.append(f"  {framing}: exact {_pct(self.exact_by_framing[framing], count)}")
        lines += [f"  price differs: {p}" for p in self.price_differs]
        lines += [f"  wrong: {w}" for w in self.known_wrong] + [f"  missed: {m}" for m in self.missed[:40]]
        return "\n".join(lines)


def _pct(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.1f}%)" if whole else "0/0"


def _framing(exchange: dict[str, Any]) -> str:
    h = exchange["response_headers"]
    kind = (
        "sse"
        if "event-stream" in (h.get("content-type") or "")
        else ("ndjson" if "ndjson" in (h.get("content-type") or "") else "json")
    )
    length = "content-length" if h.get("content-length") and not h.get("transfer-encoding") else "chunked"
    return f"{kind}/{length}" + (f"+{h['content-encoding']}" if h.get("content-encoding") else "")


def _header(event: dict[str, Any], name: str) -> str | None:
    for key, value in event.get("request", {}).get("headers", []):
        if key.lower() == name:
            return value
    return None


def replay_all(start_proxy, tmp_path: Path, exchanges: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Every exchange through one proxy; returns each exchange's network event by index."""
    with ReplayUpstream(exchanges) as replay:
        proxy = start_proxy()
        proxy.call(lambda: proxy.proxy.master.addons.add(RedirectToReplay(replay.port)))

        def send(worker: int) -> None:
            # One client (SSL context) per worker; a fresh connection per exchange, as each is its own call.
            no_reuse = httpx.Limits(max_keepalive_connections=0)
            with httpx.Client(proxy=proxy.url, timeout=30, limits=no_reuse) as client:
                for index in range(worker, len(exchanges), WORKERS):
                    ex = exchanges[index]
                    client.request(
                        ex["method"],
                        f"http://{ex['host']}{ex['path']}",
                        content=ex["request_body"].encode(),
                        headers={"content-type": "application/json", "x-replay-id": str(index)},
                    )

        started = time.monotonic()
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(send, range(WORKERS)))
        print(f"replayed in {time.monotonic() - started:.1f}s")
        proxy.stop()
        print(f"stopped at {time.monotonic() - started:.1f}s")
    events = network_events(read_tape(tmp_path / "tape"))
    return {int(_header(e, "x-replay-id") or -1): e for e in events}


def measure(events: dict[int, dict[str, Any]], exchanges: list[dict[str, Any]]) -> Figures:
    figures = Figures(exchanges=len(exchanges))
    for index, exchange in enumerate(exchanges):
        event = events.get(index)
        llm = (event or {}).get("llm")
        if llm:
            figures.llm_events += 1
        want = reported_usage(exchange)
        if want is None:
            continue
        framing = _framing(exchange)
        figures.reporting += 1
        figures.by_framing[framing] += 1
        usage = (llm or {}).get("usage") or {}
        got = (usage.get("input_tokens"), usage.get("output_tokens"))
        if usage.get("known") and got == (want.input_tokens, want.output_tokens):
            figures.exact += 1
            figures.exact_by_framing[framing] += 1
        elif usage.get("known"):
            figures.known_wrong.append(f"{exchange['id']}: {got} != {want}")
        else:
            figures.missed.append(f"{exchange['id']} [{framing}]")
        if llm and usage.get("known") and llm["cost"]["usd"] is None:
            figures.known_unpriced[llm.get("response_model") or llm.get("request_model")] += 1
        expected = genai_expected(llm, exchange, want) if llm and usage.get("known") else None
        if expected is not None:
            figures.priceable += 1
            cost = llm["cost"]
            if cost["usd"] is None:
                figures.unpriced_known_to_genai.append(f"{exchange['id']}: {llm.get('response_model')}")
            else:
                figures.priced += 1
                if cost["usd"] == pytest.approx(expected, abs=1e-9):
                    figures.priced_as_genai += 1
                else:
                    figures.price_differs.append(
                        f"{exchange['id']}: {llm.get('response_model')} {cost['usd']} != {expected} "
                        f"({cost['source']}, {cost['priced_as']})"
                    )
    return figures


def genai_expected(llm: dict[str, Any], exchange: dict[str, Any], want: Reported) -> float | None:
    """The call's price asked of genai-prices directly (not through failcore), with the provider found
    from the request URL and the provider's own usage; None when genai-prices does not know the model."""
    from genai_prices import Usage, calc_price

    url = f"https://{exchange['host'].split(':')[0]}{exchange['path']}"
    usage = Usage(
        input_tokens=want.input_tokens,
        cache_read_tokens=want.cached_input_tokens,
        cache_write_tokens=want.cache_write_tokens,
        output_tokens=want.output_tokens,
    )
    for model in (llm.get("response_model"), llm.get("request_model")):
        for where in ({"provider_api_url": url}, {}):
            if not model:
                continue
            try:
                priced = calc_price(
                    usage,
                    model_ref=model,
                    price_context={"service_tier": want.service_tier} if want.service_tier else None,
                    **where,  # type: ignore[arg-type]
                )
            except LookupError:
                continue
            return float(priced.total_price.quantize(Decimal("1e-9")))
    return None


@pytest.mark.timeout(600)
def test_real_recorded_exchanges_are_metered_as_the_provider_reported(start_proxy, tmp_path):
    exchanges = load_exchanges()
    assert len(exchanges) == 546
    figures = measure(replay_all(start_proxy, tmp_path, exchanges), exchanges)
    print(figures.summary())
    assert figures.reporting > 400
    assert figures.known_wrong == []
    assert figures.exact >= 0.99 * figures.reporting, (figures.exact, figures.reporting, figures.missed[:20])
    assert figures.unpriced_known_to_genai == []
    assert figures.price_differs == []
