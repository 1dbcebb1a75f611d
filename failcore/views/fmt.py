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
