"""One place for how numbers and times read: sizes, money, tokens, timestamps."""

from __future__ import annotations

import datetime as dt


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def tokens(inp: int, out: int) -> str:
    return f"{inp:,}/{out:,}"


def usd(value: float | None, unpriced: int = 0) -> str:
    """Dollars with the digits a sub-cent amount needs; a total with unpriced calls in it is a lower
    bound and says so (`+?`); an unknown cost is `?`."""
    if value is None:
        return "?"
    shown = f"${value:.6f}" if 0 < value < 0.01 else f"${value:.4f}" if value < 1 else f"${value:,.2f}"
    return shown + ("+?" if unpriced else "")
