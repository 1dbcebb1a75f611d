"""What a replay saved: the calls answered from the tape and what they would have cost live."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def replay_savings(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Calls a replay run answered from its tape, and the tokens and dollars those calls would have
    cost (from their `llm` blocks; None when no replayed call had known usage or a price)."""
    out: dict[str, Any] = {"calls": 0, "input_tokens": None, "output_tokens": None, "usd": None}
    for event in events:
        if event.get("kind") != "network" or (event.get("replay") or {}).get("mode") != "replayed":
            continue
        out["calls"] += 1
        llm = event.get("llm") or {}
        usage = llm.get("usage") or {}
        for name in ("input_tokens", "output_tokens"):
            if usage.get("known") and isinstance(usage.get(name), int):
                out[name] = (out[name] or 0) + usage[name]
        usd = (llm.get("cost") or {}).get("usd")
        if isinstance(usd, int | float):
            out["usd"] = round((out["usd"] or 0.0) + usd, 6)
    return out
