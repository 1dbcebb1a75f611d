"""The report's pictures: a waterfall of exchanges and bar charts, as SVG geometry computed here from
numbers only (no recorded text reaches an attribute but through the templates' escaping)."""

from __future__ import annotations

from typing import Any, Final

from failcore.report.collect import RunReport, as_dict, int_or_none, number_or_none
from failcore.report.filters import fmt_ms, fmt_tokens, fmt_usd

WATERFALL_MAX_ROWS: Final = 1000
_STREAM_TICKS_PER_ROW: Final = 200


_WF_WIDTH: Final = 1320
_WF_LABEL: Final = 400
_WF_ROW: Final = 16
_WF_TOP: Final = 22
_WF_LABEL_CHARS: Final = 58


def _nice_step(span_ms: float) -> float:
    raw = span_ms / 6
    for step in (
        1,
        2,
        5,
        10,
        20,
        50,
        100,
        200,
        500,
        1000,
        2000,
        5000,
        10_000,
        15_000,
        30_000,
        60_000,
        120_000,
        300_000,
        600_000,
        900_000,
        1_800_000,
        3_600_000,
    ):
        if step >= raw:
            return float(step)
    return float(3_600_000 * max(1, round(raw / 3_600_000)))


def _ms_label(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.3g} s"
    if ms < 3_600_000:
        return f"{ms / 60_000:.3g} min"
    return f"{ms / 3_600_000:.3g} h"


def waterfall(r: RunReport) -> dict[str, Any] | None:
    """A browser-network-panel view: one row per exchange, waiting then receiving, chunks as ticks."""
    exchanges = [ev for ev in r.timeline if ev.get("kind") == "network"]
    left_out = max(0, len(exchanges) - WATERFALL_MAX_ROWS)
    exchanges = exchanges[:WATERFALL_MAX_ROWS]
    times = [(ev, number_or_none(ev.get("ts_start"))) for ev in exchanges]
    times = [(ev, t) for ev, t in times if t is not None]
    if not times:
        return None
    t0 = min(t for _, t in times)
    ends = []
    for ev, t in times:
        end = number_or_none(ev.get("ts_end"))
        latency = number_or_none(ev.get("latency_ms"))
        ends.append(max(t, end if end is not None else t + (latency or 0) / 1000))
    span_ms = max(1.0, (max(ends) - t0) * 1000)
    plot = _WF_WIDTH - _WF_LABEL - 20
    scale = plot / span_ms
    step = _nice_step(span_ms)
    ticks = []
    at = 0.0
    while at <= span_ms + 1e-9:
        ticks.append({"x": round(_WF_LABEL + at * scale, 1), "label": "+" + _ms_label(at)})
        at += step
    rows = []
    for index, ((ev, start), end) in enumerate(zip(times, ends, strict=True)):
        y = _WF_TOP + index * _WF_ROW
        begin_ms = (start - t0) * 1000
        total_ms = (end - start) * 1000
        ttfb = number_or_none(ev.get("ttfb_ms"))
        ttfb = min(ttfb, total_ms) if ttfb is not None else None
        outcome, decision = ev.get("outcome"), ev.get("decision")
        state = {"BLOCKED": "block", "FAIL": "fail"}.get(str(outcome)) or (
            "warn" if decision == "WARN" else "ok"
        )
        x = _WF_LABEL + begin_ms * scale
        bars = []
        if state == "block":
            bars.append(("block", x, max(3.0, total_ms * scale)))
        elif ttfb is not None and ttfb > 0:
            bars.append(("wait", x, max(1.0, ttfb * scale)))
            bars.append((state, x + ttfb * scale, max(1.0, (total_ms - ttfb) * scale)))
        else:
            bars.append((state, x, max(1.0, total_ms * scale)))
        stream = as_dict(ev.get("stream")) or as_dict(as_dict(ev.get("response")).get("stream"))
        chunks = [c for c in stream.get("chunks") or () if isinstance(c, list | tuple) and len(c) == 2]
        chunk_x = []
        base = begin_ms + (ttfb or 0.0)
        for offset, _chunk_size in chunks[:_STREAM_TICKS_PER_ROW]:
            offset_ms = number_or_none(offset)
            if offset_ms is not None:
                chunk_x.append(round(_WF_LABEL + min(span_ms, base + offset_ms) * scale, 1))
        host = as_dict(ev.get("target")).get("host", "")
        label = f"{ev.get('seq')} {ev.get('method') or ''} {host}{ev.get('path') or ''}"
        if len(label) > _WF_LABEL_CHARS:
            label = label[: _WF_LABEL_CHARS - 1] + "…"
        why = {
            "block": f"BLOCKED by {ev.get('rule') or '(default)'}",
            "fail": f"FAILED: {ev.get('fail_reason')}",
        }
        tooltip = (
            f"seq {ev.get('seq')} · {ev.get('summary') or ev.get('path') or ''}"
            f" · start +{_ms_label(begin_ms)}"
            f" · first byte {fmt_ms(ttfb)} ms · total {fmt_ms(total_ms)} ms"
            + (f" · {len(chunks)} chunk(s)" if chunks else "")
            + (f" · {why[state]}" if state in why else f" · {decision} {ev.get('status') or ''}")
        )
        rows.append(
            {
                "seq": int_or_none(ev.get("seq")),
                "y": y,
                "label": label,
                "label_class": {"block": "block", "fail": "block", "warn": "warn"}.get(state, ""),
                "bars": [{"cls": c, "x": round(bx, 1), "w": round(bw, 1)} for c, bx, bw in bars],
                "chunks": chunk_x,
                "tooltip": tooltip,
                "mark": {"block": "✕ blocked", "fail": "! failed"}.get(state, ""),
                "mark_x": round(min(_WF_WIDTH - 60, x + sum(b[2] for b in bars) + 4), 1),
            }
        )
    height = _WF_TOP + len(rows) * _WF_ROW + 6
    return {
        "width": _WF_WIDTH,
        "height": height,
        "label_width": _WF_LABEL,
        "row": _WF_ROW,
        "ticks": ticks,
        "rows": rows,
        "left_out": left_out + r.timeline_omitted,
        "span": _ms_label(span_ms),
    }


_CHART_HEIGHT: Final = 120
_CHART_WIDTH: Final = 960
_CHART_MAX_BARS: Final = 400


def _bar_chart(values: list[tuple[str, list[tuple[float, str]]]], caption: str) -> dict[str, Any] | None:
    """Stacked vertical bars; each entry is (tooltip, [(value, css class), …])."""
    shown = values[:_CHART_MAX_BARS]
    peak = max((sum(v for v, _ in parts) for _, parts in shown), default=0.0)
    if not shown or peak <= 0:
        return None
    slot = _CHART_WIDTH / len(shown)
    bar = max(1.0, min(28.0, slot * 0.7))
    scale = _CHART_HEIGHT / peak
    groups = []
    for index, (tooltip, parts) in enumerate(shown):
        x = index * slot + (slot - bar) / 2
        top = float(_CHART_HEIGHT)
        rects = []
        for value, css in parts:
            height = value * scale
            top -= height
            rects.append(
                {"cls": css, "x": f"{x:.1f}", "y": f"{top:.1f}", "w": f"{bar:.1f}", "h": f"{height:.1f}"}
            )
        groups.append({"tooltip": tooltip, "rects": rects})
    return {
        "caption": caption,
        "width": _CHART_WIDTH,
        "height": _CHART_HEIGHT,
        "peak": f"{peak:,.6g}",
        "groups": groups,
        "note": f"first {len(shown)} of {len(values)} calls" if len(values) > len(shown) else "",
    }


def charts(r: RunReport) -> list[dict[str, Any]]:
    token_bars = [
        (
            f"seq {c.seq} {c.model or '?'}: "
            f"{fmt_tokens(c.input_tokens)} in, {fmt_tokens(c.output_tokens)} out",
            [(float(c.input_tokens or 0), "in"), (float(c.output_tokens or 0), "out")],
        )
        for c in r.llm_calls
    ]
    cost_bars = [
        (f"seq {c.seq} {c.model or '?'}: {fmt_usd(c.cost_usd)}", [(c.cost_usd or 0.0, "cost")])
        for c in r.llm_calls
    ]
    charts = (_bar_chart(token_bars, "Tokens per call"), _bar_chart(cost_bars, "Cost per call (USD)"))
    return [c for c in charts if c is not None]
