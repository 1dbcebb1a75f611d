"""Terminal tables of runs and events that fit the terminal.

A table whose columns do not fit drops the least useful ones (never `seq` and `decision` for events,
never the run id for runs) instead of squeezing every header to `st…`; on a wide terminal events gain
rule, model, tokens and cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from failcore.runs import RunSummary
from failcore.textsafe import printable, safe_text
from failcore.views import fmt
from failcore.views import runtime as rt

DECISION_STYLE = {"ALLOW": "green", "WARN": "yellow", "BLOCK": "bold red"}
OUTCOME_STYLE = {"ok": "green", "BLOCKED": "bold red", "FAIL": "red"}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    width: int  # the least it needs
    priority: int  # lower = kept longer
    cell: Callable[[dict[str, Any]], Text | str]
    justify: str = "left"
    flexible: bool = False  # takes the width that is left
    max_width: int | None = None


def fit(columns: Sequence[Column], width: int, gap: int = 2) -> list[Column]:
    """The columns that fit in `width`, most useful first, kept in their display order."""
    kept: list[Column] = []
    used = 0
    for column in sorted(columns, key=lambda c: c.priority):
        need = column.width + (gap if kept else 0)
        if used + need > width and kept:
            continue
        kept.append(column)
        used += need
    return [c for c in columns if c in kept]


def _table(title: str, columns: Sequence[Column], style: box.Box = box.SIMPLE_HEAD) -> Table:
    table = Table(title=printable(title), title_justify="left", box=style, pad_edge=False)
    for c in columns:
        table.add_column(
            c.name,
            justify=c.justify,  # type: ignore[arg-type]
            no_wrap=True,
            overflow="ellipsis",
            min_width=c.width,
            max_width=c.max_width,
            ratio=1 if c.flexible else None,
        )
    return table


# ------------------------------------------------------------------------------------------ events


def dlp_hits(ev: dict[str, Any]) -> list[dict[str, Any]]:
    dlp = ev.get("dlp")
    hits = dlp.get("hits") if isinstance(dlp, dict) else None
    return [h for h in hits if isinstance(h, dict)] if isinstance(hits, list) else []


def would_block(ev: dict[str, Any]) -> bool:
    """Let through, but a BLOCK rule matched: observe mode, or a DLP hit whose action is BLOCK."""
    if ev.get("outcome") == "BLOCKED":
        return False
    return bool(ev.get("would_block")) or any(h.get("action") == "BLOCK" for h in dlp_hits(ev))


def _summary(ev: dict[str, Any]) -> Text:
    kind = ev.get("kind") or ""
    if kind in rt.RUNTIME_KINDS:  # tool name + masked args, fs op + path, exec argv, connect target
        return safe_text(rt.describe(ev))
    text = ev.get("summary") or (ev.get("detail") or {}).get("action") or kind
    if kind not in ("network", "websocket"):
        text = f"[{kind}] {text if text != kind else ''}".rstrip()
    return safe_text(text)


def _decision(ev: dict[str, Any]) -> Text:
    decision = ev.get("decision") or ""
    return safe_text(decision + ("*" if would_block(ev) else ""), DECISION_STYLE.get(decision, ""))


def _outcome(ev: dict[str, Any]) -> Text:
    outcome = ev.get("outcome") or ""
    # A failure shows its reason: "FAIL" alone says nothing a person can act on.
    shown = ev.get("fail_reason") or outcome if outcome == "FAIL" else outcome
    style = OUTCOME_STYLE.get(outcome, "red" if ev.get("kind") == "internal_error" else "")
    return safe_text(shown, style)


def _time(ev: dict[str, Any]) -> str:
    ts = ev.get("ts_end") if ev.get("kind") == "run_end" else ev.get("ts_start") or ev.get("ts")
    return fmt.when(ts).split(" ")[-1]


def _dlp(ev: dict[str, Any]) -> Text:
    hits = dlp_hits(ev)
    if not hits:
        return Text("")
    blocking = any(h.get("action") == "BLOCK" for h in hits)
    return safe_text(len(hits), "bold red" if blocking else "yellow")


def _llm(ev: dict[str, Any]) -> dict[str, Any]:
    llm = ev.get("llm")
    return llm if isinstance(llm, dict) else {}


def _model(ev: dict[str, Any]) -> Text:
    llm = _llm(ev)
    return safe_text(llm.get("response_model") or llm.get("request_model") or "")


def _tokens(ev: dict[str, Any]) -> str:
    usage = _llm(ev).get("usage") or {}
    if not usage:
        return ""
    return fmt.tokens(usage.get("input_tokens") or 0, usage.get("output_tokens") or 0)


def _cost(ev: dict[str, Any]) -> str:
    llm = _llm(ev)
    if not llm:
        return ""
    return fmt.usd((llm.get("cost") or {}).get("usd"))


def _host(ev: dict[str, Any]) -> Text:
    if ev.get("kind") in rt.RUNTIME_KINDS:
        return safe_text(rt.host(ev))
    target = ev.get("target")
    return safe_text(target.get("host", "") if isinstance(target, dict) else "")


def _ms(ev: dict[str, Any]) -> str:
    ms = ev.get("latency_ms")
    return f"{ms:.0f}" if isinstance(ms, int | float) else "-"


EVENT_COLUMNS: tuple[Column, ...] = (
    Column("seq", 4, 0, lambda ev: str(ev.get("seq")), justify="right"),
    Column("time", 8, 7, _time),
    Column("decision", 8, 1, _decision),
    Column("outcome", 10, 3, _outcome, max_width=18),
    Column("status", 6, 4, lambda ev: safe_text(ev.get("status") if ev.get("status") is not None else "-")),
    Column("host", 9, 5, _host, max_width=24),
    Column("summary", 18, 2, _summary, flexible=True),
    Column("rule", 10, 9, lambda ev: safe_text(ev.get("rule") or ""), max_width=22),
    Column("dlp", 3, 6, _dlp, justify="right"),
    Column("model", 10, 10, _model, max_width=24),
    Column("tokens", 9, 11, _tokens, justify="right"),
    Column("$", 9, 12, _cost, justify="right"),
    Column("ms", 5, 8, _ms, justify="right"),
)


def events_table(title: str, events: Iterable[dict[str, Any]], width: int) -> Table:
    columns = fit(EVENT_COLUMNS, width)
    table = _table(title, columns)
    for ev in events:
        table.add_row(*(c.cell(ev) for c in columns))
    return table


def event_line(ev: dict[str, Any]) -> Text:
    """One event as one line (`tail`): the columns of a wide table, space-separated."""
    cells = [c.cell(ev) for c in EVENT_COLUMNS if c.name not in ("model", "tokens", "$")]
    return safe_text(" ".join(printable(c) if isinstance(c, str) else c.plain for c in cells if c != ""))


# ------------------------------------------------------------------------------------------- runs


def _runs_columns(run_width: int, runtime: bool) -> tuple[Column, ...]:
    def cell(name: str) -> Callable[[dict[str, Any]], Text | str]:
        return lambda r: r[name]

    return (
        Column("started", 19, 6, cell("started")),
        Column("run", run_width, 0, cell("run")),
        Column("requests", 8, 1, cell("requests"), justify="right"),
        Column("blocked", 7, 2, cell("blocked"), justify="right"),
        Column("warned", 6, 3, cell("warned"), justify="right"),
        Column("failed", 6, 4, cell("failed"), justify="right"),
        Column("dlp", 3, 5, cell("dlp"), justify="right"),
        Column("tokens", 9, 8, cell("tokens"), justify="right"),
        Column("cost", 9, 7, cell("cost"), justify="right"),
        Column("hosts", 12, 9, cell("hosts"), flexible=True),
    ) + (
        # Only for a tape with guarded tool calls: tool calls and effects (blocked after a slash).
        (
            Column("tools", 5, 5, cell("tools"), justify="right"),
            Column("effects", 7, 8, cell("effects"), justify="right"),
        )
        if runtime
        else ()
    )


def runs_table(title: str, runs: Sequence[RunSummary], width: int) -> Table:
    # The id is what `failcore show RUN` takes: never shortened, the other columns give way.
    run_width = max((len(printable(r.run)) for r in runs), default=3)
    # Ruled cells (3 characters between columns, 4 at the edges) keep a row readable next to its header.
    runtime = any(r.tool_calls or r.effects for r in runs)
    columns = fit(_runs_columns(run_width, runtime), width - 4, gap=3)
    table = _table(title, columns, box.HEAVY_HEAD)
    for r in runs:
        cells = {
            "started": fmt.when(r.started),
            "run": safe_text(r.run),
            "requests": str(r.requests),
            "blocked": safe_text(r.blocked, "red" if r.blocked else ""),
            "warned": safe_text(r.warned, "yellow" if r.warned else ""),
            "failed": safe_text(r.failed, "red" if r.failed else ""),
            "dlp": safe_text(r.dlp_hits or "", "bold red" if r.dlp_would_block else "yellow"),
            "tokens": fmt.tokens(r.input_tokens, r.output_tokens) if r.llm_calls else "-",
            "cost": fmt.usd(r.cost_usd, r.unpriced_calls) if r.llm_calls else "-",
            "hosts": safe_text(", ".join(sorted(h.rsplit(":", 1)[0] for h in r.hosts))),
            # Tool calls (blocked ones after a slash) and the effects seen inside them.
            "tools": safe_text(
                f"{r.tool_calls}" + (f"/{r.tool_blocked}" if r.tool_blocked else ""),
                "red" if r.tool_blocked else "",
            ),
            "effects": safe_text(
                f"{r.effects}" + (f"/{r.effects_blocked}" if r.effects_blocked else ""),
                "red" if r.effects_blocked else "",
            ),
        }
        table.add_row(*(c.cell(cells) for c in columns))
    return table


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def run_summary_table(s: dict[str, Any]) -> Table:
    """The one-screen summary `run`, `sample` and `proxy` end with (from RunSummary.to_dict())."""
    table = Table(title=printable(f"failcore run {s['run']}"), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("requests", str(s.get("requests", 0)))
    blocked = s.get("blocked", 0)
    by_rule = _counts(s.get("block_rules") or {})
    table.add_row(
        "blocked", safe_text(f"{blocked}" + (f" ({by_rule})" if by_rule else ""), "red" if blocked else "")
    )
    table.add_row(
        "warned",
        safe_text(f"{s.get('warned', 0)} ({s.get('would_block', 0)} would be blocked in enforce mode)"),
    )
    if s.get("dlp_hits"):
        severities = _counts(s.get("dlp_severities") or {})
        blocking = s.get("dlp_would_block", 0)
        note = f"; {blocking} let through that a BLOCK rule matched" if blocking else ""
        table.add_row(
            "DLP hits",
            safe_text(
                f"{s['dlp_hits']} in {s.get('dlp_exchanges', 0)} exchange(s) ({severities}){note}",
                "bold red" if blocking else "yellow",
            ),
        )
    failed = s.get("failed", 0)
    reasons = _counts(s.get("fail_reasons") or {})
    table.add_row(
        "failed", safe_text(f"{failed}" + (f" ({reasons})" if reasons else ""), "red" if failed else "")
    )
    table.add_row("bytes", f"{fmt.size(s.get('bytes_out', 0))} out, {fmt.size(s.get('bytes_in', 0))} in")
    if s.get("llm_calls"):
        unpriced = s.get("unpriced_calls", 0)
        tokens = fmt.tokens(s.get("input_tokens", 0), s.get("output_tokens", 0))
        cost = fmt.usd(s.get("cost_usd", 0.0), unpriced)
        note = f" ({unpriced} without a known cost)" if unpriced else ""
        table.add_row("LLM calls", f"{s['llm_calls']}: {tokens} tokens in/out, {cost}{note}")
    hosts = s.get("hosts") or {}
    table.add_row("hosts", safe_text(", ".join(f"{h} ×{n}" for h, n in sorted(hosts.items())) or "-"))
    if s.get("tool_calls"):
        table.add_row("tool calls", safe_text(rt.tool_calls_line(s), "red" if s.get("tool_blocked") else ""))
    if s.get("effects_fs") or s.get("effects_exec") or s.get("effects_connect"):
        table.add_row("effects", safe_text(rt.effects_line(s), "red" if s.get("effects_blocked") else ""))
    if s.get("tls_failures"):
        tls_hosts = ", ".join(f"{h} ×{n}" for h, n in sorted((s.get("tls_failed_hosts") or {}).items()))
        table.add_row("TLS failed", safe_text(f"{s['tls_failures']} ({tls_hosts})", "red"))
    if s.get("raw_tcp"):
        table.add_row("other TCP", safe_text(s["raw_tcp"]))
    if s.get("contained"):
        targets = ", ".join(f"{t} ×{n}" for t, n in sorted((s.get("refused_targets") or {}).items()))
        table.add_row("refused", safe_text(f"{s.get('refused', 0)}" + (f" ({targets})" if targets else "")))
    if s.get("internal_errors"):
        table.add_row("internal errors", safe_text(s["internal_errors"], "red"))
    if s.get("dropped"):
        table.add_row("dropped events", safe_text(s["dropped"], "red"))
    if "exit_code" in s:
        table.add_row("exit code", str(s["exit_code"]))
    if s.get("replay_saved"):
        saved = s["replay_saved"]
        tokens = f"{saved['input_tokens'] or 0} in / {saved['output_tokens'] or 0} out tokens"
        usd = f", {fmt.usd(saved['usd'])}" if saved["usd"] is not None else ""
        table.add_row("replay saved", safe_text(f"{saved['calls']} calls, {tokens}{usd}"))
    if s.get("tape"):
        table.add_row("tape", safe_text(s["tape"]))
    return table
