"""Price table loading, model id resolution, overrides and exact cost computation."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from failcore.llm import LlmCall, compute_cost, load_price_table
from failcore.llm.prices import REASON_UNPRICED_MODEL, REASON_USAGE_UNKNOWN, PriceTable, seen_cost

MILLION = Decimal(1_000_000)


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return load_price_table()


def _usd(amount: Decimal) -> float:
    return float(amount.quantize(Decimal("1e-9")))


def _call(model: str, **usage: int | None) -> LlmCall:
    return LlmCall(provider="test", api="test", response_model=model, usage_known=True, **usage)


def test_shipped_table_is_dated_and_covers_current_families(table: PriceTable) -> None:
    assert table.as_of is not None and len(table.as_of) == 10
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
        "claude-3-5-haiku",
        "claude-3-5-sonnet",
        "claude-3-7-sonnet",
        "claude-sonnet-4",
        "claude-opus-4",
        "claude-opus-4-1",
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "claude-opus-4-5",
        "gemini-1.5-pro",
        "gemini-1.5-flash",
        "gemini-2.0-flash",
        "gemini-2.5-flash",
        "gemini-2.5-pro",
    ):
        price = table.lookup(model)
        assert price is not None, model
        assert price.output > price.input > 0


def test_openai_cached_tokens_billed_once_at_cached_rate(table: PriceTable) -> None:
    price = table.lookup("gpt-4o")
    assert price is not None and price.cached_input is not None
    call = _call(
        "gpt-4o-2024-08-06",
        input_tokens=2006,
        cached_input_tokens=1920,
        output_tokens=300,
        reasoning_tokens=0,
    )
    expected_input = Decimal(2006 - 1920) * price.input / MILLION
    expected_cached = Decimal(1920) * price.cached_input / MILLION
    expected_output = Decimal(300) * price.output / MILLION
    cost = compute_cost(call, table)
    assert cost.reason is None
    assert cost.priced_as == "gpt-4o"
    assert cost.input_usd == _usd(expected_input)
    assert cost.cached_input_usd == _usd(expected_cached)
    assert cost.output_usd == _usd(expected_output)
    assert cost.cache_write_usd == 0.0
    assert cost.usd == _usd(expected_input + expected_cached + expected_output)


def test_anthropic_cache_read_and_write_priced_separately(table: PriceTable) -> None:
    price = table.lookup("claude-sonnet-4-5")
    assert price is not None and price.cached_input is not None and price.cache_write is not None
    # Normalised usage as produced from {"input_tokens":21,"cache_creation_input_tokens":1000,
    # "cache_read_input_tokens":3000,"output_tokens":150}.
    call = _call(
        "claude-sonnet-4-5-20250929",
        input_tokens=4021,
        cached_input_tokens=3000,
        cache_write_tokens=1000,
        output_tokens=150,
    )
    expected = (
        Decimal(21) * price.input
        + Decimal(3000) * price.cached_input
        + Decimal(1000) * price.cache_write
        + Decimal(150) * price.output
    ) / MILLION
    cost = compute_cost(call, table)
    assert cost.usd == _usd(expected)
    assert cost.cache_write_usd == _usd(Decimal(1000) * price.cache_write / MILLION)


def test_reasoning_tokens_are_not_billed_twice(table: PriceTable) -> None:
    without = compute_cost(_call("o3", input_tokens=100, output_tokens=1000, reasoning_tokens=0), table)
    with_reasoning = compute_cost(
        _call("o3", input_tokens=100, output_tokens=1000, reasoning_tokens=900), table
    )
    assert without.usd == with_reasoning.usd
    price = table.lookup("o3")
    assert price is not None
    assert with_reasoning.usd == _usd((Decimal(100) * price.input + Decimal(1000) * price.output) / MILLION)


def test_missing_cached_price_falls_back_to_input_rate(table: PriceTable) -> None:
    price = table.lookup("gemini-2.0-flash-lite")
    assert price is not None and price.cached_input is None
    cost = compute_cost(
        _call("gemini-2.0-flash-lite", input_tokens=1000, cached_input_tokens=400, output_tokens=10), table
    )
    assert cost.usd == _usd((Decimal(1000) * price.input + Decimal(10) * price.output) / MILLION)


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
        request_model="gpt-4.1-mini",
        usage_known=True,
        input_tokens=1_000_000,
        output_tokens=0,
    )
    price = table.lookup("gpt-4.1-mini")
    assert price is not None
    assert compute_cost(call, table).usd == float(price.input)


@pytest.mark.parametrize(
    ("model_id", "priced_as"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("o3-2025-04-16", "o3"),
        ("gpt-5-chat-latest", "gpt-5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-sonnet-4-0", "claude-sonnet-4"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet"),
        ("us.anthropic.claude-3-7-sonnet-20250219-v1:0", "claude-3-7-sonnet"),
        ("anthropic/claude-sonnet-4.5", "claude-sonnet-4-5"),
        ("openai/gpt-4o", "gpt-4o"),
        ("gemini-2.0-flash-001", "gemini-2.0-flash"),
        ("models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("GPT-4O", "gpt-4o"),
    ],
)
def test_dated_and_vendor_ids_resolve(table: PriceTable, model_id: str, priced_as: str) -> None:
    price = table.lookup(model_id)
    assert price is not None
    assert price.model == priced_as


@pytest.mark.parametrize("model_id", ["o3-pro", "gpt-4o-audio-preview", "gpt-4", "claude-2", ""])
def test_different_products_are_not_prefix_matched(table: PriceTable, model_id: str) -> None:
    assert table.lookup(model_id) is None


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
    assert gpt.output == Decimal("10.0")  # untouched field keeps the shipped value
    assert gpt.cached_input == Decimal("1.25")
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
    price = table.lookup("claude-sonnet-4-5")
    assert price is not None
    abandoned = LlmCall(
        provider="anthropic", api="messages", response_model="claude-sonnet-4-5", input_tokens=1000
    )
    assert compute_cost(abandoned, table).usd is None  # the evidence never invents a bill
    assert seen_cost(abandoned, table) == _usd(Decimal(1000) * price.input / MILLION)
    finished = _call("claude-sonnet-4-5", input_tokens=1000, output_tokens=10)
    assert seen_cost(finished, table) == compute_cost(finished, table).usd
    nothing = LlmCall(provider="anthropic", api="messages", response_model="claude-sonnet-4-5")
    assert seen_cost(nothing, table) is None
