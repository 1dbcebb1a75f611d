"""LLM-call evidence: provider detection, usage extraction, pricing and contract drift."""

from failcore.llm.drift import contract_drift
from failcore.llm.prices import CostResult, ModelPrice, PriceTable, compute_cost, load_price_table
from failcore.llm.usage import LlmCall, SseUsageTracker, UsageSnapshot, detect_api, parse_call

__all__ = [
    "CostResult",
    "LlmCall",
    "ModelPrice",
    "PriceTable",
    "SseUsageTracker",
    "UsageSnapshot",
    "compute_cost",
    "contract_drift",
    "detect_api",
    "load_price_table",
    "parse_call",
]
