"""One place for how numbers and times read: sizes, money, counts and tokens, moments; for every view
(terminal tables, the viewer, the HTML report), each with the density its place needs."""

from __future__ import annotations

import datetime as dt
import time


def when(ts: float | None, *, date: bool = True, millis: bool = False, utc: bool = False) -> str:
    """A moment as a person reads it: local time by default (terminal views: the person is here), UTC
    for the HTML report (`utc=True`: it is shared, so its dated times say `UTC`). `millis` adds .mmm
    (the viewer's and the report's event clocks); `-` when unknown."""
    if ts is None:
        return "-"
    pattern = "%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S"
    if utc:
        moment = dt.datetime.fromtimestamp(ts, dt.UTC)
        shown = moment.strftime(pattern) + (moment.strftime(".%f")[:4] if millis else "")
        return shown + (" UTC" if date else "")
    clock = time.strftime(pattern, time.localtime(ts))
    return f"{clock}.{int(ts * 1000) % 1000:03d}" if millis else clock


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def tokens(inp: int, out: int) -> str:
    return f"{inp:,}/{out:,}"


def count(n: int | None, *, compact: bool = False, missing: str = "-") -> str:
    """A count with thousands separators (1,200); `compact=True` for a narrow column (1200, 12k, 1.5M)."""
    if n is None:
        return missing
    if not compact:
        return f"{n:,}"
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    return f"{n / 1000:.0f}k" if n >= 10_000 else str(n)


def usd(
    value: float | None, unpriced: int = 0, *, missing: str = "?", exact: bool = False, cell: bool = False
) -> str:
    """Dollars with the digits a sub-cent amount needs; a total with unpriced calls in it is a lower
    bound and says so (`+?`); an unknown cost is `missing` (`?` in sentences, `-` in tables).

    One function, three densities on purpose (each view's tests pin its own):
    - default (terminal sentences and tables): $0.000198, $0.5000, $1,234.50.
    - `exact=True` (the HTML report, an audit document): four decimals at every size ($20.0000), so
      a total can be checked against the per-call rows under it to a hundredth of a cent.
    - `cell=True` (the viewer's cost column, at most 7 cells, no `$`: the column header says it):
      0, 0.02¢ (a sub-cent amount in cents with two significant digits rather than a misleading
      0.0000), 0.0125, 12.50.
    """
    if value is None:
        return missing
    if cell:
        shown = "0" if value == 0 else f"{value * 100:.2g}¢" if value < 0.01 else f"{value:.4f}"
        return shown if value < 1 else f"{value:.2f}"
    if exact:
        shown = f"${value:,.4f}" if value >= 0.01 or value == 0 else f"${value:.6f}"
    else:
        shown = f"${value:.6f}" if 0 < value < 0.01 else f"${value:.4f}" if value < 1 else f"${value:,.2f}"
    return shown + ("+?" if unpriced else "")
