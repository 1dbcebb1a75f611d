"""Prices (USD per 1M tokens) and exact per-call cost computation.

Every model is priced from genai-prices (Pydantic's maintained price database), with its snapshot
prices, long-context tiers, cache read/write rates and service tiers (priority/flex). A policy's
`prices:` table overrides it model by model; failcore's own table (data/prices.yaml) holds only what
genai-prices lacks. Each cost says which source priced it and as which model.

Costs are computed in Decimal and rounded to 1e-9 USD so that the same usage always yields the same number.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from importlib.metadata import version as distribution_version
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from failcore.llm.usage import LlmCall

PRICE_FIELDS = ("input", "output", "cached_input", "cache_write")
REQUIRED_FIELDS = ("input", "output")
_ENTRY_FIELDS = frozenset(PRICE_FIELDS) | {"aliases"}
_TOKENS_PER_UNIT = Decimal(1_000_000)
_QUANTUM = Decimal("1e-9")

SHIPPED_PRICES_PATH = Path(__file__).resolve().parent.parent / "data" / "prices.yaml"

# genai-prices itself is imported on first use (it takes seconds: pydantic, its price data), so CLI
# commands that never price a call do not pay for it; the proxy loads it in a thread as it starts.
# Its version (the `source` of a cost it priced) is looked up on first use too: the package metadata
# lookup walks sys.path (~10-20 ms of a proxy's start-up here). `GENAI_SOURCE` still reads as a name.


@functools.cache
def genai_source() -> str:
    return f"genai-prices {distribution_version('genai-prices')}"


def __getattr__(name: str) -> str:
    if name == "GENAI_SOURCE":
        return genai_source()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SHIPPED_SOURCE = "failcore"
POLICY_SOURCE = "policy"
# failcore's provider names -> genai-prices provider ids (None: let genai-prices find it by model id).
_GENAI_PROVIDERS = {
    "openai": "openai",
    "azure_openai": "azure",
    "anthropic": "anthropic",
    "gemini": "google",
    "vertex_ai": "google-vertex",
    "groq": "groq",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "together": "together",
    "openrouter": "openrouter",
    "xai": "x-ai",
    "fireworks": "fireworks",
}
# Service tiers genai-prices has price variants for (the response says which tier served the call).
SERVICE_TIERS = frozenset({"priority", "flex"})

REASON_UNPRICED_MODEL = "unpriced_model"
REASON_USAGE_UNKNOWN = "usage_unknown"

# Snapshot/version decorations that do not change the price: dated ids, Vertex "@date", Gemini "-001",
# Bedrock "-v1:0" and "-latest" pointers.
_VERSION_SUFFIXES = (
    re.compile(r"-\d{4}-\d{2}-\d{2}$"),
    re.compile(r"-v\d+(?::\d+)?$"),
    re.compile(r"[-@]\d{8}$"),
    re.compile(r"-\d{3}$"),
    re.compile(r"-latest$"),
)
# "openai/gpt-4o" (OpenRouter), "models/gemini-2.5-pro", "us.anthropic.claude-..." (Bedrock).
_VENDOR_PREFIX = re.compile(r"^(?:[\w.-]+/)+|^(?:[a-z]{2,4}\.)?anthropic\.")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    model: str
    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None


@dataclass(frozen=True, slots=True)
class CostResult:
    usd: float | None
    reason: str | None = None
    priced_as: str | None = None
    # Which price source priced it: "genai-prices X.Y.Z", "policy" or "failcore" (the shipped table).
    source: str | None = None
    input_usd: float | None = None
    cached_input_usd: float | None = None
    cache_write_usd: float | None = None
    output_usd: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class PriceTable:
    """failcore's own prices: the shipped table (models genai-prices lacks) with a policy's `prices:`
    on top. `source` says what priced a model found here."""

    def __init__(
        self,
        prices: dict[str, ModelPrice],
        aliases: dict[str, str],
        as_of: str | None,
        policy_models: frozenset[str] = frozenset(),
    ) -> None:
        self._prices = prices
        self._aliases = aliases
        self.as_of = as_of
        self.policy_models = policy_models

    def source(self, price: ModelPrice) -> str:
        return POLICY_SOURCE if price.model in self.policy_models else SHIPPED_SOURCE

    def __contains__(self, model: str) -> bool:
        return self.lookup(model) is not None

    def models(self) -> list[str]:
        return sorted(self._prices)

    def lookup(self, model: str | None) -> ModelPrice | None:
        if not model:
            return None
        for candidate in _candidate_ids(model):
            key = self._aliases.get(candidate, candidate)
            price = self._prices.get(key)
            if price is not None:
                return price
        return None


def _candidate_ids(model: str) -> list[str]:
    """The id itself first, then progressively stripped of vendor prefixes and version suffixes."""
    base = model.strip().lower()
    candidates = [base]
    stripped = _VENDOR_PREFIX.sub("", base)
    if stripped.startswith("claude"):
        # OpenRouter and others spell "claude-sonnet-4.5" where Anthropic spells "claude-sonnet-4-5".
        stripped = stripped.replace(".", "-")
    candidates.append(stripped)
    changed = True
    while changed:
        changed = False
        for suffix in _VERSION_SUFFIXES:
            shorter = suffix.sub("", stripped)
            if shorter != stripped and shorter:
                stripped = shorter
                candidates.append(stripped)
                changed = True
    return list(dict.fromkeys(candidates))


def _price_value(model: str, field: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ValueError(f"prices: model {model!r} field {field!r}: expected a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"prices: model {model!r} field {field!r}: must be finite")
    try:
        # str() of a float is its shortest round-trip form, so 0.075 becomes exactly Decimal("0.075").
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"prices: model {model!r} field {field!r}: not a number: {value!r}") from None
    if not number.is_finite() or number < 0:
        raise ValueError(f"prices: model {model!r} field {field!r}: must be a non-negative number")
    return number


def _entry_fields(model: str, entry: object) -> tuple[dict[str, Decimal], list[str]]:
    if not isinstance(entry, dict):
        raise ValueError(f"prices: model {model!r}: expected a mapping of prices, got {type(entry).__name__}")
    unknown = sorted(str(key) for key in entry if key not in _ENTRY_FIELDS)
    if unknown:
        raise ValueError(f"prices: model {model!r} field {unknown[0]!r}: unknown field")
    values = {field: _price_value(model, field, entry[field]) for field in PRICE_FIELDS if field in entry}
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(alias, str) and alias for alias in aliases):
        raise ValueError(f"prices: model {model!r} field 'aliases': expected a list of model ids")
    return values, [alias.strip().lower() for alias in aliases]


def _merge_models(models: object, prices: dict[str, ModelPrice], aliases: dict[str, str]) -> None:
    if not isinstance(models, dict):
        raise ValueError("prices: expected a mapping of model id to prices")
    for raw_name, entry in models.items():
        if not isinstance(raw_name, str) or not raw_name.strip():
            raise ValueError(f"prices: model {raw_name!r}: model id must be a non-empty string")
        name = raw_name.strip().lower()
        values, entry_aliases = _entry_fields(raw_name, entry)
        existing = prices.get(aliases.get(name, name))
        if existing is None and not all(field in values for field in REQUIRED_FIELDS):
            existing = genai_base_price(name)
        if existing is not None:
            name = existing.model
            merged = {field: getattr(existing, field) for field in PRICE_FIELDS}
            merged.update(values)
        else:
            missing = [field for field in REQUIRED_FIELDS if field not in values]
            if missing:
                raise ValueError(f"prices: model {raw_name!r} field {missing[0]!r}: required for a new model")
            merged = values
        prices[name] = ModelPrice(model=name, **merged)
        for alias in entry_aliases:
            aliases[alias] = name


def _models_section(document: object) -> object:
    if isinstance(document, dict) and isinstance(document.get("models"), dict):
        return document["models"]
    return document


def _read_shipped_table(path: Path | None) -> dict:
    # Read-only for its callers: a policy reload rebuilds the table without parsing the YAML again.
    return _shipped_document() if path is None else _read_table(path)


@functools.cache
def _shipped_document() -> dict:
    return _read_table(None)


def _read_table(path: Path | None) -> dict:
    yaml = YAML(typ="safe")
    document = yaml.load((path or SHIPPED_PRICES_PATH).read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not isinstance(document.get("models"), dict):
        raise ValueError(f"prices: {path or 'shipped table'} has no 'models' mapping")
    return document


def load_price_table(path: str | Path | None = None, overrides: dict | None = None) -> PriceTable:
    """Load the price table (shipped one by default) and apply a policy's ``prices:`` overrides on top.

    ``overrides`` is either ``{model: {input: .., output: .., ...}}`` or the table shape ``{models: {...}}``;
    a partial entry for a known model replaces only the fields it names.
    """
    document = _read_shipped_table(Path(path) if path is not None else None)
    prices: dict[str, ModelPrice] = {}
    aliases: dict[str, str] = {}
    _merge_models(document["models"], prices, aliases)
    as_of = document.get("as_of")
    policy_models: set[str] = set(prices) if path is not None else set()
    if overrides:
        before = dict(prices)
        _merge_models(_models_section(overrides), prices, aliases)
        policy_models |= {name for name, price in prices.items() if before.get(name) is not price}
        if isinstance(overrides.get("as_of"), str):
            as_of = overrides["as_of"]
    return PriceTable(prices, aliases, str(as_of) if as_of is not None else None, frozenset(policy_models))


def _flat(value: object) -> Decimal | None:
    from genai_prices.types import TieredPrices

    if isinstance(value, TieredPrices):
        return value.base
    return value if isinstance(value, Decimal) else None


def genai_base_price(model: str) -> ModelPrice | None:
    """genai-prices' base (untiered, standard-tier) rates for a model: what a policy's partial
    override of that model patches."""
    found = _genai_model(None, model)
    if found is None:
        return None
    prices = found[1].get_prices(datetime.now(tz=UTC))
    values = {
        "input": _flat(prices.input_mtok),
        "output": _flat(prices.output_mtok),
        "cached_input": _flat(prices.cache_read_mtok),
        "cache_write": _flat(prices.cache_write_mtok),
    }
    if values["input"] is None or values["output"] is None:
        return None
    return ModelPrice(model=model, **values)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=4096)
def _genai_model(provider: str | None, model: str) -> tuple[Any, Any] | None:
    """genai-prices' (provider, model) for a model id, cached per id: the provider's own list first,
    then any provider whose models match the id."""
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    provider_id = _GENAI_PROVIDERS.get(provider or "")
    attempts = [provider_id, None] if provider_id else [None]
    # The id as sent, then without a vendor prefix ("openai/gpt-4o", "anthropic/claude-sonnet-4.5");
    # dated snapshots are genai-prices' to resolve, since a snapshot can have its own price.
    for candidate in _candidate_ids(model)[:2]:
        for attempt in attempts:
            try:
                return snapshot.find_provider_model(candidate, None, attempt, None)
            except LookupError:
                continue
    return None


def genai_price(call: LlmCall, service_tier: str | None = None) -> CostResult | None:
    """The call priced by genai-prices, or None when it does not know the model."""
    for model in (call.response_model, call.request_model):
        if not model:
            continue
        found = _genai_model(call.provider, model)
        if found is None:
            continue
        provider, info = found
        assert call.input_tokens is not None and call.output_tokens is not None
        cached = min(call.cached_input_tokens or 0, call.input_tokens)
        cache_write = min(call.cache_write_tokens or 0, call.input_tokens - cached)
        from genai_prices import Usage as GenaiUsage

        usage = GenaiUsage(
            input_tokens=call.input_tokens,
            cache_read_tokens=cached,
            cache_write_tokens=cache_write,
            output_tokens=call.output_tokens,
        )
        if call.cache_write_1h_tokens:
            # Anthropic's 1-hour cache writes have their own rate; genai-prices prices them apart.
            usage.cache_write_1h_tokens = min(call.cache_write_1h_tokens, cache_write)
        context = {"service_tier": service_tier} if service_tier in SERVICE_TIERS else None
        try:
            priced = info.calc_price(usage, provider, price_context=context)
        except (ValueError, TypeError):
            return None
        return CostResult(
            usd=_usd(priced.total_price),
            priced_as=info.id,
            source=genai_source(),
            input_usd=_usd(priced.input_price),
            output_usd=_usd(priced.output_price),
        )
    return None


def _genai_model_of(call: LlmCall) -> str | None:
    for model in (call.response_model, call.request_model):
        found = _genai_model(call.provider, model) if model else None
        if found is not None:
            return found[1].id
    return None


def warm_up_genai_prices() -> None:
    """Import genai-prices and load its price data (seconds), so the first priced call does not wait."""
    _genai_model(None, "gpt-4o")


def priced_by_genai(call: LlmCall, table: PriceTable) -> bool:
    """Whether pricing this call runs genai-prices' calculation (not just a cached lookup)."""
    if call.input_tokens is None:
        return False
    price = table.lookup(call.response_model) or table.lookup(call.request_model)
    if price is not None and table.source(price) == POLICY_SOURCE:
        return False
    return _genai_model_of(call) is not None


def _usd(amount: Decimal) -> float:
    return float(amount.quantize(_QUANTUM, rounding=ROUND_HALF_EVEN))


def compute_cost(call: LlmCall, table: PriceTable) -> CostResult:
    """Exact USD cost of one call.

    ``input_tokens`` includes cached reads and cache writes (see usage.py), so those are carved out and
    billed at their own rates — never twice. Reasoning tokens are already inside ``output_tokens``.
    """
    price = table.lookup(call.response_model) or table.lookup(call.request_model)
    if price is None or table.source(price) != POLICY_SOURCE:
        # genai-prices first; failcore's shipped table only for what it does not know.
        genai_model = _genai_model_of(call)
        if genai_model is not None:
            if not call.usage_known or call.input_tokens is None or call.output_tokens is None:
                return CostResult(
                    usd=None, reason=REASON_USAGE_UNKNOWN, priced_as=genai_model, source=genai_source()
                )
            return genai_price(call, call.service_tier) or CostResult(usd=None, reason=REASON_UNPRICED_MODEL)
    if price is None:
        return CostResult(usd=None, reason=REASON_UNPRICED_MODEL)
    if not call.usage_known or call.input_tokens is None or call.output_tokens is None:
        return CostResult(
            usd=None, reason=REASON_USAGE_UNKNOWN, priced_as=price.model, source=table.source(price)
        )

    cached = min(call.cached_input_tokens or 0, call.input_tokens)
    cache_write = min(call.cache_write_tokens or 0, call.input_tokens - cached)
    uncached = call.input_tokens - cached - cache_write

    input_cost = Decimal(uncached) * price.input / _TOKENS_PER_UNIT
    cached_cost = Decimal(cached) * (price.cached_input if price.cached_input is not None else price.input)
    cached_cost /= _TOKENS_PER_UNIT
    write_rate = price.cache_write if price.cache_write is not None else price.input
    cache_write_cost = Decimal(cache_write) * write_rate / _TOKENS_PER_UNIT
    output_cost = Decimal(call.output_tokens) * price.output / _TOKENS_PER_UNIT
    total = input_cost + cached_cost + cache_write_cost + output_cost
    return CostResult(
        usd=_usd(total),
        priced_as=price.model,
        source=table.source(price),
        input_usd=_usd(input_cost),
        cached_input_usd=_usd(cached_cost),
        cache_write_usd=_usd(cache_write_cost),
        output_usd=_usd(output_cost),
    )


def seen_cost(call: LlmCall, table: PriceTable) -> float | None:
    """What the tokens seen so far cost, when the provider's final count never arrived (a stream the
    client abandoned): a floor for budgets, never written as the call's cost."""
    if call.usage_known or call.input_tokens is None:
        return compute_cost(call, table).usd
    floor = replace(call, usage_known=True, output_tokens=call.output_tokens or 0)
    return compute_cost(floor, table).usd


def cost_warnings(call: LlmCall, cost: CostResult) -> list[dict[str, str]]:
    if cost.reason == "unpriced_model":
        return [
            {
                "reason": "unpriced_model",
                "message": f"no price for model {call.model!r}: cost unknown "
                "(add it under `prices:` in the policy)",
            }
        ]
    if cost.reason == "usage_unknown":
        hint = ""
        if call.api == "chat_completions" and call.stream:
            hint = " (set stream_options.include_usage to get usage in the stream)"
        return [{"reason": "usage_unknown", "message": f"the provider reported no token usage{hint}"}]
    return []
