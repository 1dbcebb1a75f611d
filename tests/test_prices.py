"""Price table loading, model id resolution, overrides and exact cost computation."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from failcore.llm import LlmCall, compute_cost, load_price_table
from failcore.llm.prices import (
    GENAI_SOURCE,
    REASON_UNPRICED_MODEL,
    REASON_USAGE_UNKNOWN,
    ModelPrice,
    PriceTable,
    seen_cost,
)

MILLION = Decimal(1_000_000)


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return load_price_table()


def _usd(amount: Decimal) -> float:
    return float(amount.quantize(Decimal("1e-9")))


def _call(model: str, provider: str = "test", **usage: int | None) -> LlmCall:
    return LlmCall(provider=provider, api="test", response_model=model, usage_known=True, **usage)


# Published list prices (USD / 1M tokens: input, output, cache read, cache write), copied by hand from
# openai.com/api/pricing, platform.claude.com/docs/en/about-claude/pricing and
# ai.google.dev/gemini-api/docs/pricing: the expected values, independent of any price database.
PUBLISHED = {
    "gpt-4o": ("2.50", "10", "1.25", None),
    "gpt-4o-2024-05-13": ("5", "15", None, None),
    "gpt-4o-mini": ("0.15", "0.60", "0.075", None),
    "o3": ("2", "8", "0.50", None),
    "claude-sonnet-4-5": ("3", "15", "0.30", "3.75"),
    "gemini-2.0-flash-lite": ("0.075", "0.30", None, None),
}


def _published(model: str, input_tokens: int, output: int, cached: int = 0, write: int = 0) -> float:
    rates = [Decimal(r) if r is not None else None for r in PUBLISHED[model]]
    inp, out, read, wr = rates
    assert inp is not None and out is not None
    total = (
        Decimal(input_tokens - cached - write) * inp
        + Decimal(cached) * (read if read is not None else inp)
        + Decimal(write) * (wr if wr is not None else inp)
        + Decimal(output) * out
    )
    return _usd(total / MILLION)


def test_current_families_are_priced_by_genai_prices(table: PriceTable) -> None:
    for model in (
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "o1",
        "o3",
        "o3-mini",
        "o4-mini",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-5.4",
        "gpt-3.5-turbo-0125",
        "claude-3-5-haiku",
        "claude-3-5-sonnet",
        "claude-3-7-sonnet",
        "claude-sonnet-4",
        "claude-opus-4",
        "claude-opus-4-1",
        "claude-sonnet-4-5",
        "claude-sonnet-4-6",
        "claude-haiku-4-5",
        "claude-opus-4-5",
        "gemini-1.5-pro",
        "gemini-1.5-flash",
        "gemini-2.0-flash",
        "gemini-2.5-flash",
        "gemini-2.5-pro",
        "gemini-3-flash-preview",
        "mistral-tiny",
        "deepseek-chat",
    ):
        cost = compute_cost(_call(model, input_tokens=1000, output_tokens=1000), table)
        assert cost.source == GENAI_SOURCE, model
        assert cost.usd is not None and cost.usd > 0, model


def test_snapshot_has_its_own_price(table: PriceTable) -> None:
    snapshot = compute_cost(_call("gpt-4o-2024-05-13", "openai", input_tokens=1000, output_tokens=100), table)
    assert snapshot.usd == _published("gpt-4o-2024-05-13", 1000, 100)
    assert snapshot.priced_as == "gpt-4o-2024-05-13"
    alias = compute_cost(_call("gpt-4o-2024-08-06", "openai", input_tokens=1000, output_tokens=100), table)
    assert alias.usd == _published("gpt-4o", 1000, 100)


def test_openai_cached_tokens_billed_once_at_cached_rate(table: PriceTable) -> None:
    call = _call(
        "gpt-4o-2024-08-06",
        "openai",
        input_tokens=2006,
        cached_input_tokens=1920,
        output_tokens=300,
        reasoning_tokens=0,
    )
    cost = compute_cost(call, table)
    assert cost.reason is None
    assert cost.usd == _published("gpt-4o", 2006, 300, cached=1920)
    assert cost.output_usd == _usd(Decimal(300) * Decimal(10) / MILLION)


def test_anthropic_cache_read_and_write_priced_separately(table: PriceTable) -> None:
    # Normalised usage as produced from {"input_tokens":21,"cache_creation_input_tokens":1000,
    # "cache_read_input_tokens":3000,"output_tokens":150}.
    call = _call(
        "claude-sonnet-4-5-20250929",
        "anthropic",
        input_tokens=4021,
        cached_input_tokens=3000,
        cache_write_tokens=1000,
        output_tokens=150,
    )
    assert compute_cost(call, table).usd == _published("claude-sonnet-4-5", 4021, 150, 3000, 1000)


def test_long_context_tier_applies_past_200k_input(table: PriceTable) -> None:
    # Claude Sonnet 4.5 over 200K input tokens: $6 input / $22.50 output for the whole call.
    call = _call("claude-sonnet-4-5", "anthropic", input_tokens=250_000, output_tokens=1000)
    assert compute_cost(call, table).usd == _usd(
        (Decimal(250_000) * 6 + Decimal(1000) * Decimal("22.5")) / MILLION
    )


def test_service_tier_prices(table: PriceTable) -> None:
    # OpenAI priority processing for gpt-4o: $4.25 input / $17 output.
    call = _call("gpt-4o", "openai", input_tokens=1000, output_tokens=100)
    call.service_tier = "priority"
    assert compute_cost(call, table).usd == _usd((Decimal(1000) * Decimal("4.25") + 100 * 17) / MILLION)
    call.service_tier = "default"
    assert compute_cost(call, table).usd == _published("gpt-4o", 1000, 100)


def test_reasoning_tokens_are_not_billed_twice(table: PriceTable) -> None:
    without = compute_cost(_call("o3", input_tokens=100, output_tokens=1000, reasoning_tokens=0), table)
    with_reasoning = compute_cost(
        _call("o3", input_tokens=100, output_tokens=1000, reasoning_tokens=900), table
    )
    assert without.usd == with_reasoning.usd == _published("o3", 100, 1000)


def test_missing_cached_price_falls_back_to_input_rate(table: PriceTable) -> None:
    cost = compute_cost(
        _call("gemini-2.0-flash-lite", input_tokens=1000, cached_input_tokens=400, output_tokens=10), table
    )
    assert cost.usd == _published("gemini-2.0-flash-lite", 1000, 10)


def test_shipped_table_only_holds_models_genai_prices_lacks(table: PriceTable) -> None:
    for model in table.models():
        for provider in ("openai", "anthropic", "gemini", "test"):
            call = _call(model, provider, input_tokens=1, output_tokens=1)
            assert compute_cost(call, table).source == "failcore", (model, provider)


def test_a_shipped_entry_never_shadows_genai_prices(tmp_path: Path) -> None:
    stale = ModelPrice(model="gpt-4o", input=Decimal(99), output=Decimal(99))
    shipped_like = PriceTable({"gpt-4o": stale, "local-llm": replace(stale, model="local-llm")}, {}, None)
    call = _call("gpt-4o", "openai", input_tokens=1000, output_tokens=100)
    assert compute_cost(call, shipped_like).source == GENAI_SOURCE
    assert compute_cost(call, shipped_like).usd == _published("gpt-4o", 1000, 100)
    local = compute_cost(_call("local-llm", input_tokens=1000, output_tokens=0), shipped_like)
    assert (local.source, local.usd) == ("failcore", 0.099)
    doc = tmp_path / "prices.yaml"
    doc.write_text('as_of: "2025-01-01"\nmodels:\n  gpt-4o: {input: 99, output: 99}\n')
    custom = load_price_table(doc)  # a table file the user names is theirs: it wins
    assert compute_cost(call, custom).source == "policy"


def test_unknown_model_and_unknown_usage(table: PriceTable) -> None:
    unpriced = compute_cost(_call("my-private-finetune", input_tokens=10, output_tokens=10), table)
    assert (unpriced.usd, unpriced.reason) == (None, REASON_UNPRICED_MODEL)
    unknown = LlmCall(provider="openai", api="chat_completions", request_model="gpt-4o", usage_known=False)
    result = compute_cost(unknown, table)
    assert (result.usd, result.reason, result.priced_as) == (None, REASON_USAGE_UNKNOWN, "gpt-4o")


def test_request_model_used_when_response_model_absent(table: PriceTable) -> None:
    call = LlmCall(
        provider="azure_openai",
        api="chat_completions",
        request_model="gpt-4o-mini",
        usage_known=True,
        input_tokens=1_000_000,
        output_tokens=0,
    )
    assert compute_cost(call, table).usd == 0.15


@pytest.mark.parametrize(
    ("model_id", "priced_as"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("anthropic/claude-sonnet-4.5", "claude-sonnet-4-5"),
        ("openai/gpt-4o", "gpt-4o"),
        ("GPT-4O", "gpt-4o"),
    ],
)
def test_dated_and_vendor_ids_resolve(table: PriceTable, model_id: str, priced_as: str) -> None:
    cost = compute_cost(_call(model_id, input_tokens=1, output_tokens=1), table)
    assert cost.priced_as == priced_as


def test_overrides_patch_fields_and_add_models() -> None:
    table = load_price_table(
        overrides={
            "gpt-4o": {"input": 2.0},
            "acme-llm": {"input": "0.5", "output": 1, "aliases": ["acme-llm-v2"]},
        }
    )
    gpt = table.lookup("gpt-4o-2024-08-06")
    assert gpt is not None
    assert gpt.input == Decimal("2.0")
    assert gpt.output == Decimal("10")  # untouched field keeps genai-prices' value
    assert gpt.cached_input == Decimal("1.25")
    cost = compute_cost(_call("gpt-4o", input_tokens=1_000_000, output_tokens=0), table)
    assert (cost.usd, cost.source) == (2.0, "policy")
    acme = table.lookup("acme-llm-v2")
    assert acme is not None and acme.model == "acme-llm"
    cost = compute_cost(_call("acme-llm", input_tokens=2_000_000, output_tokens=1_000_000), table)
    assert cost.usd == 2.0  # 2M x 0.5 + 1M x 1
    assert load_price_table().lookup("acme-llm") is None  # overrides never leak into the shipped table


def test_overrides_accept_table_shape() -> None:
    table = load_price_table(overrides={"as_of": "2030-01-01", "models": {"gpt-4o": {"output": 12}}})
    assert table.as_of == "2030-01-01"
    price = table.lookup("gpt-4o")
    assert price is not None and price.output == Decimal(12)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"gpt-4o": {"input": -1}}, "model 'gpt-4o' field 'input'"),
        ({"gpt-4o": {"output": "cheap"}}, "model 'gpt-4o' field 'output'"),
        ({"gpt-4o": {"cached_input": True}}, "model 'gpt-4o' field 'cached_input'"),
        ({"gpt-4o": {"cache_write": float("nan")}}, "model 'gpt-4o' field 'cache_write'"),
        ({"gpt-4o": {"inptu": 1}}, "model 'gpt-4o' field 'inptu'"),
        ({"new-model": {"input": 1}}, "model 'new-model' field 'output'"),
        ({"new-model": {"input": 1, "output": 2, "aliases": "nm"}}, "model 'new-model' field 'aliases'"),
        ({"gpt-4o": 3}, "model 'gpt-4o'"),
    ],
)
def test_invalid_overrides_name_model_and_field(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_price_table(overrides=overrides)


def test_custom_table_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text('as_of: "2025-01-01"\nmodels:\n  tiny: {input: 1, output: 2, cached_input: 0.5}\n')
    table = load_price_table(path)
    assert table.as_of == "2025-01-01"
    assert table.models() == ["tiny"]
    cost = compute_cost(
        _call("tiny-20250101", input_tokens=3_000_000, cached_input_tokens=1_000_000, output_tokens=0), table
    )
    assert cost.usd == 2.5  # 2M uncached x 1 + 1M cached x 0.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("as_of: x\n")
    with pytest.raises(ValueError, match="no 'models' mapping"):
        load_price_table(bad)


def test_seen_cost_is_a_floor_for_an_abandoned_stream_and_the_cost_when_known(table: PriceTable) -> None:
    abandoned = LlmCall(
        provider="anthropic", api="messages", response_model="claude-sonnet-4-5", input_tokens=1000
    )
    assert compute_cost(abandoned, table).usd is None  # the evidence never invents a bill
    assert seen_cost(abandoned, table) == _published("claude-sonnet-4-5", 1000, 0)
    finished = _call("claude-sonnet-4-5", input_tokens=1000, output_tokens=10)
    assert seen_cost(finished, table) == compute_cost(finished, table).usd
    nothing = LlmCall(provider="anthropic", api="messages", response_model="claude-sonnet-4-5")
    assert seen_cost(nothing, table) is None


def test_anthropic_one_hour_cache_writes_cost_twice_the_input_rate(table: PriceTable) -> None:
    # Published: 5-minute cache writes 1.25x input ($3.75 for Sonnet 4.5), 1-hour writes 2x ($6).
    call = _call(
        "claude-sonnet-4-5", "anthropic", input_tokens=10_000, cache_write_tokens=4000, output_tokens=0
    )
    call.cache_write_1h_tokens = 3000
    expected = (Decimal(6000) * 3 + Decimal(1000) * Decimal("3.75") + Decimal(3000) * 6) / MILLION
    assert compute_cost(call, table).usd == _usd(expected)
