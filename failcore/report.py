"""`failcore report`: one self-contained HTML file describing a run, safe to open and to share.

Everything in a tape came from an agent or from the servers it talked to, so every recorded string is
hostile. The page therefore has no script at all, a Content-Security-Policy that forbids scripts,
network access and every style but the page's own stylesheet (pinned by hash), and every recorded
value goes through `esc` into text or quoted-attribute contexts only: never into a URL, a style, a
script or an event handler. Bodies are left out on purpose (they may hold whatever the agent leaked);
headers appear as the tape holds them, credentials already replaced by fingerprints.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from failcore import __version__
from failcore.runs import RunSummary, run_events
from failcore.tape.verify import VerifyReport, verify_tape
from failcore.textsafe import printable

DEFAULT_MAX_EVENTS: Final = 5000
REPORT_FILE_MODE: Final = 0o644
# Kinds that carry no story of their own: the chain's signatures are summarised by verification.
_HIDDEN_KINDS: Final = frozenset({"checkpoint"})
# CSS class names come from these fixed tables only, never from recorded text.
_DECISION_CLASS: Final = {"ALLOW": "allow", "WARN": "warn", "BLOCK": "block"}
_OUTCOME_CLASS: Final = {"ok": "allow", "BLOCKED": "block", "FAIL": "block"}
_SEVERITY_CLASS: Final = {"critical": "block", "high": "block", "medium": "warn", "low": "muted"}

CSS: Final = """
:root { --fg:#1d232b; --muted:#66707c; --line:#d9dee4; --bg:#fff; --head:#f3f5f7;
  --allow:#1c7a3a; --warn:#9a6700; --block:#b42318; --in:#3b6fd4; --out:#e08a1e; --cost:#7b49c8; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; color: var(--fg); background: var(--bg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
p.sub, .muted { color: var(--muted); }
code, td.mono, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 12.5px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 10px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--head); font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.wrap { overflow-wrap: anywhere; max-width: 520px; min-width: 90px; }
table.kv { width: auto; min-width: 480px; }
table.kv th { text-align: left; width: 160px; }
.allow { color: var(--allow); } .warn { color: var(--warn); }
.block { color: var(--block); font-weight: 600; }
.verdict { display: inline-block; padding: 6px 12px; border-radius: 4px; font-weight: 700; }
.verdict.ok { background: #e6f4ea; color: var(--allow); }
.verdict.bad { background: #fde7e5; color: var(--block); }
.verdict.partial { background: #fff4d6; color: var(--warn); }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 110px; }
.card b { display: block; font-size: 20px; }
.card span { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
details summary { cursor: pointer; color: var(--muted); }
details table { margin: 4px 0; }
svg { display: block; margin: 6px 0 2px; }
svg text { font: 10px system-ui, sans-serif; fill: var(--muted); }
.legend i { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; }
.legend i.in { background: var(--in); } .legend i.out { background: var(--out); }
.legend i.cost { background: var(--cost); }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; }
"""


def esc(value: object) -> str:
    """A recorded value as inert HTML text, safe in element content and in quoted attributes.

    Control and bidi-override characters are shown as escapes first so text reads as what it is."""
    return html.escape(printable(value), quote=True)


def content_security_policy(css: str = CSS) -> str:
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    return (
        "default-src 'none'; script-src 'none'; object-src 'none'; "
        f"style-src 'sha256-{digest}'; img-src 'none'; font-src 'none'; connect-src 'none'; "
        "media-src 'none'; frame-src 'none'; base-uri 'none'; form-action 'none'"
    )


# ---------------------------------------------------------------- collecting


class ReportError(Exception):
    """The report cannot be made (no tape, unknown run); the message says why."""


@dataclass(slots=True)
class HostStats:
    host: str
    requests: int = 0
    blocked: int = 0
    warned: int = 0
    failed: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    latency_sum: float = 0.0
    latency_count: int = 0

    @property
    def mean_latency_ms(self) -> float | None:
        return self.latency_sum / self.latency_count if self.latency_count else None


@dataclass(frozen=True, slots=True)
class LlmCallRow:
    seq: int | None
    ts: float | None
    host: str
    provider: str | None
    api: str | None
    model: str | None
    stream: bool
    usage_known: bool
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    cost_usd: float | None
    cost_reason: str | None
    finish_reason: str | None


@dataclass(slots=True)
class RunReport:
    run: str
    tape: Path
    summary: RunSummary
    verification: VerifyReport
    generated: float
    timeline: list[dict[str, Any]] = field(default_factory=list)
    timeline_omitted: int = 0
    hosts: dict[str, HostStats] = field(default_factory=dict)
    blocked: list[dict[str, Any]] = field(default_factory=list)
    warned: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    dlp_hits: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    llm_calls: list[LlmCallRow] = field(default_factory=list)

    @property
    def tokens_in(self) -> int:
        return sum(c.input_tokens or 0 for c in self.llm_calls if c.usage_known)

    @property
    def tokens_out(self) -> int:
        return sum(c.output_tokens or 0 for c in self.llm_calls if c.usage_known)

    @property
    def cost_usd(self) -> float:
        return sum(c.cost_usd for c in self.llm_calls if c.cost_usd is not None)

    @property
    def unpriced_calls(self) -> int:
        return sum(1 for c in self.llm_calls if c.cost_usd is None)


def _host_key(ev: dict[str, Any]) -> str:
    target = ev.get("target") or {}
    return f"{target.get('host')}:{target.get('port')}"


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def llm_call_row(ev: dict[str, Any]) -> LlmCallRow | None:
    """The COST evidence of one network event, or None when it was not an LLM call."""
    llm = ev.get("llm")
    if not isinstance(llm, dict):
        return None
    usage = llm.get("usage") if isinstance(llm.get("usage"), dict) else {}
    cost = llm.get("cost") if isinstance(llm.get("cost"), dict) else {}
    known = usage.get("known") is True
    return LlmCallRow(
        seq=_int_or_none(ev.get("seq")),
        ts=_number_or_none(ev.get("ts_start")),
        host=_host_key(ev),
        provider=llm.get("provider"),
        api=llm.get("api"),
        model=llm.get("response_model") or llm.get("request_model"),
        stream=llm.get("stream") is True,
        usage_known=known,
        input_tokens=_int_or_none(usage.get("input_tokens")) if known else None,
        output_tokens=_int_or_none(usage.get("output_tokens")) if known else None,
        total_tokens=_int_or_none(usage.get("total_tokens")) if known else None,
        cost_usd=_number_or_none(cost.get("usd")),
        cost_reason=cost.get("reason"),
        finish_reason=llm.get("finish_reason"),
    )


class _Collector:
    def __init__(self, report: RunReport, max_events: int) -> None:
        self._report = report
        self._max_events = max_events

    def add(self, ev: dict[str, Any]) -> None:
        report = self._report
        report.summary.add(ev)
        kind = ev.get("kind")
        if kind in _HIDDEN_KINDS:
            return
        if len(report.timeline) < self._max_events:
            report.timeline.append(ev)
        else:
            report.timeline_omitted += 1
        if kind == "network":
            self._add_network(ev)
        elif kind == "internal_error":
            report.failed.append(ev)

    def _add_network(self, ev: dict[str, Any]) -> None:
        report = self._report
        key = _host_key(ev)
        stats = report.hosts.get(key)
        if stats is None:
            stats = report.hosts[key] = HostStats(key)
        stats.requests += 1
        stats.bytes_out += _int_or_none(ev.get("bytes_out")) or 0
        stats.bytes_in += _int_or_none(ev.get("bytes_in")) or 0
        latency = _number_or_none(ev.get("latency_ms"))
        if latency is not None:
            stats.latency_sum += latency
            stats.latency_count += 1
        outcome, decision = ev.get("outcome"), ev.get("decision")
        if outcome == "BLOCKED":
            stats.blocked += 1
            report.blocked.append(ev)
        elif decision == "WARN":
            stats.warned += 1
            report.warned.append(ev)
        if outcome == "FAIL":
            stats.failed += 1
            report.failed.append(ev)
        for warning in ev.get("warnings") or ():
            if isinstance(warning, dict):
                report.warnings.append((ev, warning))
        dlp = ev.get("dlp")
        if isinstance(dlp, dict):
            for hit in dlp.get("hits") or ():
                if isinstance(hit, dict):
                    report.dlp_hits.append((ev, hit))
        call = llm_call_row(ev)
        if call is not None:
            report.llm_calls.append(call)


def collect_report(
    tape_dir: Path,
    run: str,
    *,
    public_key: Ed25519PublicKey | None = None,
    max_events: int = DEFAULT_MAX_EVENTS,
) -> RunReport:
    """Read one run from the tape and verify the whole tape. Raises ReportError for an unknown run."""
    tape_dir = Path(tape_dir)
    if not tape_dir.is_dir():
        raise ReportError(f"no tape at {tape_dir}")
    report = RunReport(
        run=run,
        tape=tape_dir,
        summary=RunSummary(run=run),
        verification=VerifyReport(),
        generated=dt.datetime.now(dt.UTC).timestamp(),
    )
    collector = _Collector(report, max_events)
    seen = 0
    for ev in run_events(tape_dir, run):
        seen += 1
        collector.add(ev)
    if not seen:
        raise ReportError(f"no run {run!r} in {tape_dir}")
    report.verification = verify_tape(tape_dir, public_key=public_key)
    return report


# ---------------------------------------------------------------- formatting


def _utc(ts: float | None, *, with_date: bool = True) -> str:
    if ts is None:
        return "-"
    moment = dt.datetime.fromtimestamp(ts, dt.UTC)
    if with_date:
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return moment.strftime("%H:%M:%S.%f")[:-3]


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min {secs} s" if hours else f"{minutes} min {secs} s"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.4f}" if value >= 0.01 or value == 0 else f"${value:.6f}"


def _tokens(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _ms(value: object) -> str:
    number = _number_or_none(value)
    return "-" if number is None else f"{number:,.0f}"


def _cell(value: object, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f"<td{cls}>{esc(value)}</td>"


def _row(cells: Iterable[str]) -> str:
    return "<tr>" + "".join(cells) + "</tr>"


def _table(headers: Iterable[tuple[str, str]], rows: Iterable[str], empty: str) -> str:
    body = "\n".join(rows)
    if not body:
        return f'<p class="muted">{esc(empty)}</p>'
    head = "".join(
        f'<th class="{css}">{esc(name)}</th>' if css else f"<th>{esc(name)}</th>" for name, css in headers
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def _event_summary(ev: dict[str, Any]) -> str:
    kind = str(ev.get("kind") or "")
    if kind in ("network", "websocket"):
        return str(ev.get("summary") or ev.get("path") or "")
    detail = ev.get("detail") if isinstance(ev.get("detail"), dict) else {}
    if kind == "dropped":
        return f"[dropped] {ev.get('count')} event(s) lost"
    if kind == "internal_error":
        return f"[internal_error] {ev.get('error') or ''}".rstrip()
    if kind == "policy":
        verdict = "ok" if detail.get("ok") else "rejected"
        return f"[policy] {detail.get('action') or ''} {detail.get('path') or ''} ({verdict})"
    return f"[{kind}]"


def _outcome_text(ev: dict[str, Any]) -> str:
    outcome = ev.get("outcome") or ""
    if outcome == "FAIL":
        return str(ev.get("fail_reason") or outcome)
    if ev.get("kind") == "internal_error":
        return "internal_error"
    cut = ev.get("cut")
    if isinstance(cut, dict):
        return f"{outcome} (cut: {cut.get('reason')})"
    return str(outcome)


def _decision_text(ev: dict[str, Any]) -> str:
    decision = str(ev.get("decision") or "")
    return decision + ("*" if ev.get("would_block") and decision == "WARN" else "")


def _notes(ev: dict[str, Any]) -> str:
    notes: list[str] = []
    call = llm_call_row(ev)
    if call is not None:
        notes.append(
            f"LLM {call.model or '?'} {_tokens(call.total_tokens)} tok {_usd(call.cost_usd)}"
            if call.usage_known
            else f"LLM {call.model or '?'} usage unknown"
        )
    dlp = ev.get("dlp")
    if isinstance(dlp, dict) and dlp.get("hits"):
        notes.append(f"DLP {len(dlp['hits'])} hit(s)")
    if ev.get("warnings"):
        notes.append(f"{len(ev['warnings'])} warning(s)")
    return "; ".join(notes)


def _headers_details(ev: dict[str, Any]) -> str:
    request = ev.get("request") if isinstance(ev.get("request"), dict) else {}
    headers = [h for h in request.get("headers") or () if isinstance(h, list | tuple) and len(h) == 2]
    if not headers:
        return "-"
    rows = "".join(
        f'<tr><td class="mono">{esc(name)}</td><td class="mono wrap">{esc(value)}</td></tr>'
        for name, value in headers
    )
    return f"<details><summary>{len(headers)} headers</summary><table>{rows}</table></details>"


# ---------------------------------------------------------------- sections


def _summary_section(r: RunReport) -> str:
    s = r.summary
    span = "-"
    if s.started is not None:
        span = f"{_utc(s.started)} → {_utc(s.ended)}"
        if s.ended is not None:
            span += f" ({_duration(max(0.0, s.ended - s.started))})"
    cost = _usd(r.cost_usd) if r.unpriced_calls < len(r.llm_calls) else "-"
    if r.unpriced_calls:
        cost += f" (+{r.unpriced_calls} call(s) without a price)"
    fail_reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.fail_reasons.items()))
    pairs = [
        ("run", r.run),
        ("time range", span),
        ("policy", s.policy or "-"),
        ("mode", s.mode or "-"),
        ("requests", s.requests),
        ("blocked", s.blocked),
        ("warned", f"{s.warned} ({s.would_block} would be blocked in enforce mode)"),
        ("failed", f"{s.failed}" + (f" ({fail_reasons})" if fail_reasons else "")),
        ("bytes", f"{_size(s.bytes_out)} out, {_size(s.bytes_in)} in"),
        ("LLM calls", len(r.llm_calls)),
        ("tokens", f"{r.tokens_in:,} in, {r.tokens_out:,} out" if r.llm_calls else "-"),
        ("cost", cost),
        ("websocket messages", s.websocket_messages),
        ("internal errors", s.internal_errors),
        ("dropped events", s.dropped),
        ("tape", str(r.tape)),
    ]
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs)
    cards = [
        ("requests", s.requests, ""),
        ("blocked", s.blocked, "block" if s.blocked else ""),
        ("warned", s.warned, "warn" if s.warned else ""),
        ("failed", s.failed, "block" if s.failed else ""),
        ("tokens", f"{r.tokens_in + r.tokens_out:,}", ""),
        ("cost", _usd(r.cost_usd) if r.unpriced_calls < len(r.llm_calls) else "-", ""),
    ]
    card_html = "".join(
        f'<div class="card"><b class="{css}">{esc(value)}</b><span>{esc(label)}</span></div>'
        for label, value, css in cards
    )
    return (
        f'<h2 id="summary">Summary</h2><div class="cards">{card_html}</div><table class="kv">{rows}</table>'
    )


def _verification_section(r: RunReport) -> str:
    v = r.verification
    head = f"{v.lines} lines in {v.segments} segment(s), {v.checkpoints} signed checkpoint(s)"
    if not v.ok:
        b = v.first_break
        where = f"{b.segment}:{b.line}" if b else "unknown position"
        verdict = f'<span class="verdict bad">BROKEN at {esc(where)}</span>'
        lines = [f"{head}."]
        if b:
            lines.append(f"First break ({b.kind}): {b.message}")
        lines.append("Nothing after the break can be trusted to be what was recorded.")
    elif v.truncated:
        first_segment, first_line = v.truncated[0]
        verdict = (
            f'<span class="verdict partial">OK, truncated at {esc(f"{first_segment}:{first_line}")}</span>'
        )
        lines = [f"{head}; chain intact."]
        lines += [
            f"{segment} line {line} is an incomplete final line (the writer was killed mid-write); "
            "everything before it verifies."
            for segment, line in v.truncated
        ]
    else:
        verdict = '<span class="verdict ok">OK</span>'
        lines = [f"{head}; chain intact."]
    if v.unsigned_tail:
        lines.append(f"{v.unsigned_tail} line(s) after the last checkpoint are chained but not yet signed.")
    if v.key_source == "tape":
        lines.append(
            "Signatures were checked with the public key stored in the tape itself (proves consistency, "
            "not authorship); pass --key to pin one."
        )
    elif v.key_source == "given":
        lines.append(f"Signatures were checked with the given public key {v.key_id}.")
    lines += v.warnings
    body = "".join(f"<li>{esc(line)}</li>" for line in lines)
    return f'<h2 id="verification">Tape verification (whole tape)</h2><p>{verdict}</p><ul>{body}</ul>'


_TIMELINE_HEADERS: Final = (
    ("seq", "num"),
    ("time (UTC)", ""),
    ("decision", ""),
    ("outcome", ""),
    ("status", "num"),
    ("host", ""),
    ("summary", ""),
    ("ms", "num"),
    ("notes", ""),
)


def _timeline_section(r: RunReport) -> str:
    rows = []
    for ev in r.timeline:
        target = ev.get("target") if isinstance(ev.get("target"), dict) else {}
        decision = ev.get("decision") or ""
        outcome = ev.get("outcome") or ""
        outcome_css = _OUTCOME_CLASS.get(outcome, "block" if ev.get("kind") == "internal_error" else "")
        ts = ev.get("ts_end") if ev.get("kind") == "run_end" else ev.get("ts_start") or ev.get("ts")
        rows.append(
            _row(
                (
                    _cell(ev.get("seq"), "num"),
                    _cell(_utc(_number_or_none(ts), with_date=False), "mono"),
                    _cell(_decision_text(ev), _DECISION_CLASS.get(decision, "")),
                    _cell(_outcome_text(ev), outcome_css),
                    _cell(ev.get("status") if ev.get("status") is not None else "-", "num"),
                    _cell(target.get("host", ""), "wrap"),
                    _cell(_event_summary(ev), "mono wrap"),
                    _cell(_ms(ev.get("latency_ms")), "num"),
                    _cell(_notes(ev)),
                )
            )
        )
    omitted = ""
    if r.timeline_omitted:
        omitted = (
            f'<p class="muted">{esc(r.timeline_omitted)} later event(s) not shown; '
            "see them with <code>failcore show</code>.</p>"
        )
    return (
        '<h2 id="timeline">Timeline</h2><p class="muted">* = would be blocked in enforce mode. '
        "One event in full: <code>failcore show RUN --event SEQ</code></p>"
        + _table(_TIMELINE_HEADERS, rows, "No events.")
        + omitted
    )


def _hosts_section(r: RunReport) -> str:
    headers = (
        ("host", ""),
        ("requests", "num"),
        ("blocked", "num"),
        ("warned", "num"),
        ("failed", "num"),
        ("bytes out", "num"),
        ("bytes in", "num"),
        ("mean ms", "num"),
    )
    rows = [
        _row(
            (
                _cell(h.host, "wrap"),
                _cell(h.requests, "num"),
                _cell(h.blocked, "num block" if h.blocked else "num"),
                _cell(h.warned, "num warn" if h.warned else "num"),
                _cell(h.failed, "num block" if h.failed else "num"),
                _cell(_size(h.bytes_out), "num"),
                _cell(_size(h.bytes_in), "num"),
                _cell(_ms(h.mean_latency_ms), "num"),
            )
        )
        for h in sorted(r.hosts.values(), key=lambda h: (-h.requests, h.host))
    ]
    return '<h2 id="hosts">Hosts</h2>' + _table(headers, rows, "No network traffic.")


def _issue_rows(events: list[dict[str, Any]], *, failure: bool) -> list[str]:
    rows = []
    for ev in events:
        target = ev.get("target") if isinstance(ev.get("target"), dict) else {}
        where = f"{target.get('host', '')}:{target.get('port', '')}" if target else "-"
        if failure:
            why = (
                ev.get("fail_reason") or "-",
                ev.get("status") if ev.get("status") is not None else "-",
                ev.get("error") or "-",
            )
        else:
            why = (
                ev.get("rule") or "(default)",
                ev.get("reason") or "-",
                "would be blocked in enforce mode"
                if ev.get("would_block") and ev.get("decision") == "WARN"
                else "-",
            )
        rows.append(
            _row(
                (
                    _cell(ev.get("seq"), "num"),
                    _cell(_utc(_number_or_none(ev.get("ts_start")), with_date=False), "mono"),
                    _cell(ev.get("method") or ev.get("kind") or "-", "mono"),
                    _cell(where, "wrap"),
                    _cell(ev.get("path") or "-", "mono wrap"),
                    *(_cell(value, "wrap") for value in why),
                    f"<td>{_headers_details(ev)}</td>",
                )
            )
        )
    return rows


def _issues_section(r: RunReport) -> str:
    base = (("seq", "num"), ("time (UTC)", ""), ("method", ""), ("host", ""), ("path", ""))
    policy_headers = (*base, ("rule", ""), ("reason", ""), ("note", ""), ("request headers", ""))
    fail_headers = (*base, ("fail reason", ""), ("status", ""), ("error", ""), ("request headers", ""))
    warning_rows = [
        _row(
            (
                _cell(ev.get("seq"), "num"),
                _cell(_host_key(ev), "wrap"),
                _cell(ev.get("summary") or "-", "mono wrap"),
                _cell(w.get("reason") or "-", "warn"),
                _cell(w.get("message") or "-", "wrap"),
            )
        )
        for ev, w in r.warnings
    ]
    warning_headers = (("seq", "num"), ("host", ""), ("request", ""), ("warning", ""), ("message", ""))
    return (
        f'<h2 id="blocked">Blocked ({len(r.blocked)})</h2>'
        + _table(policy_headers, _issue_rows(r.blocked, failure=False), "Nothing was blocked.")
        + f'<h2 id="warned">Warned by policy ({len(r.warned)})</h2>'
        + _table(policy_headers, _issue_rows(r.warned, failure=False), "No policy warnings.")
        + f'<h2 id="failed">Failed ({len(r.failed)})</h2>'
        + _table(fail_headers, _issue_rows(r.failed, failure=True), "No failures.")
        + f'<h2 id="warnings">Other warnings ({len(r.warnings)})</h2>'
        + _table(warning_headers, warning_rows, "No cost, contract, budget or DLP warnings.")
    )


def _dlp_section(r: RunReport) -> str:
    headers = (
        ("seq", "num"),
        ("host", ""),
        ("location", ""),
        ("rule", ""),
        ("severity", ""),
        ("category", ""),
        ("action", ""),
        ("masked preview", ""),
        ("fingerprint", ""),
    )
    rows = [
        _row(
            (
                _cell(ev.get("seq"), "num"),
                _cell(_host_key(ev), "wrap"),
                _cell(hit.get("location") or "-", "mono wrap"),
                _cell(hit.get("rule") or "-"),
                _cell(hit.get("severity") or "-", _SEVERITY_CLASS.get(str(hit.get("severity")), "")),
                _cell(hit.get("category") or "-"),
                _cell(hit.get("action") or "-", _DECISION_CLASS.get(str(hit.get("action")), "")),
                _cell(hit.get("preview") or "-", "mono wrap"),
                _cell(hit.get("fingerprint") or "-", "mono"),
            )
        )
        for ev, hit in r.dlp_hits
    ]
    return (
        f'<h2 id="dlp">DLP hits ({len(r.dlp_hits)})</h2>'
        '<p class="muted">Masked previews and salted fingerprints only, as recorded: the tape never holds '
        "the secret itself.</p>" + _table(headers, rows, "No DLP hits recorded.")
    )


_CHART_HEIGHT: Final = 120
_CHART_WIDTH: Final = 960
_CHART_MAX_BARS: Final = 400


def _bar_chart(values: list[tuple[str, list[tuple[float, str]]]], caption: str) -> str:
    """Stacked vertical bars; each entry is (tooltip, [(value, css class), …]). Only numbers and
    escaped tooltips reach the SVG."""
    shown = values[:_CHART_MAX_BARS]
    peak = max((sum(v for v, _ in parts) for _, parts in shown), default=0.0)
    if not shown or peak <= 0:
        return ""
    slot = _CHART_WIDTH / len(shown)
    bar = max(1.0, min(28.0, slot * 0.7))
    scale = _CHART_HEIGHT / peak
    shapes = []
    for index, (tooltip, parts) in enumerate(shown):
        x = index * slot + (slot - bar) / 2
        top = float(_CHART_HEIGHT)
        group = []
        for value, css in parts:
            height = value * scale
            top -= height
            group.append(
                f'<rect class="{css}" x="{x:.1f}" y="{top:.1f}" width="{bar:.1f}" height="{height:.1f}"/>'
            )
        shapes.append(f"<g><title>{esc(tooltip)}</title>{''.join(group)}</g>")
    more = len(values) - len(shown)
    note = f' <span class="muted">(first {len(shown)} of {len(values)} calls)</span>' if more else ""
    return (
        f'<svg width="{_CHART_WIDTH}" height="{_CHART_HEIGHT + 16}" viewBox="0 0 {_CHART_WIDTH} '
        f'{_CHART_HEIGHT + 16}" role="img" aria-label="{esc(caption)}">'
        f'<line x1="0" y1="{_CHART_HEIGHT}" x2="{_CHART_WIDTH}" y2="{_CHART_HEIGHT}" stroke="#d9dee4"/>'
        f'<text x="0" y="{_CHART_HEIGHT + 12}">peak {esc(f"{peak:,.6g}")}</text>'
        + "".join(shapes)
        + f'</svg><p class="muted">{esc(caption)}{note}</p>'
    )


_CHART_CSS: Final = (
    "\nrect.in { fill: var(--in); } rect.out { fill: var(--out); } rect.cost { fill: var(--cost); }\n"
)


def _llm_section(r: RunReport) -> str:
    if not r.llm_calls:
        return '<h2 id="llm">LLM calls (0)</h2><p class="muted">No LLM calls recorded in this run.</p>'
    token_bars = [
        (
            f"seq {c.seq} {c.model or '?'}: {_tokens(c.input_tokens)} in, {_tokens(c.output_tokens)} out",
            [(float(c.input_tokens or 0), "in"), (float(c.output_tokens or 0), "out")],
        )
        for c in r.llm_calls
    ]
    cost_bars = [
        (f"seq {c.seq} {c.model or '?'}: {_usd(c.cost_usd)}", [(c.cost_usd or 0.0, "cost")])
        for c in r.llm_calls
    ]
    headers = (
        ("seq", "num"),
        ("time (UTC)", ""),
        ("host", ""),
        ("provider", ""),
        ("api", ""),
        ("model", ""),
        ("stream", ""),
        ("tokens in", "num"),
        ("tokens out", "num"),
        ("total", "num"),
        ("cost", "num"),
        ("finish", ""),
    )
    rows = []
    for c in r.llm_calls:
        cost = _usd(c.cost_usd) if c.cost_usd is not None else f"- ({c.cost_reason or 'unknown'})"
        rows.append(
            _row(
                (
                    _cell(c.seq, "num"),
                    _cell(_utc(c.ts, with_date=False), "mono"),
                    _cell(c.host, "wrap"),
                    _cell(c.provider or "-"),
                    _cell(c.api or "-"),
                    _cell(c.model or "-", "mono wrap"),
                    _cell("yes" if c.stream else "no"),
                    _cell(_tokens(c.input_tokens) if c.usage_known else "unknown", "num"),
                    _cell(_tokens(c.output_tokens) if c.usage_known else "unknown", "num"),
                    _cell(_tokens(c.total_tokens) if c.usage_known else "unknown", "num"),
                    _cell(cost, "num" if c.cost_usd is not None else "num warn"),
                    _cell(c.finish_reason or "-"),
                )
            )
        )
    charts = _bar_chart(token_bars, "Tokens per call") + _bar_chart(cost_bars, "Cost per call (USD)")
    legend = (
        '<p class="legend"><i class="in"></i>input tokens<i class="out"></i>output tokens'
        '<i class="cost"></i>cost</p>'
    )
    return (
        f'<h2 id="llm">LLM calls ({len(r.llm_calls)})</h2>'
        + (legend + charts if charts else "")
        + _table(headers, rows, "No LLM calls.")
    )


def render_report(r: RunReport) -> str:
    css = CSS + _CHART_CSS
    nav = " · ".join(
        f'<a href="#{anchor}">{label}</a>'
        for anchor, label in (
            ("summary", "summary"),
            ("verification", "verification"),
            ("timeline", "timeline"),
            ("hosts", "hosts"),
            ("blocked", "blocked"),
            ("warned", "warned"),
            ("failed", "failed"),
            ("dlp", "DLP"),
            ("llm", "LLM calls"),
        )
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(content_security_policy(css))}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>failcore report: {esc(r.run)}</title>\n<style>{css}</style>\n</head><body>\n"
        f'<h1>failcore report</h1><p class="sub">run <code>{esc(r.run)}</code> · generated '
        f"{esc(_utc(r.generated))} by failcore {esc(__version__)}</p>\n<p>{nav}</p>\n"
        + "\n".join(
            section(r)
            for section in (
                _summary_section,
                _verification_section,
                _timeline_section,
                _hosts_section,
                _issues_section,
                _dlp_section,
                _llm_section,
            )
        )
        + "\n"
        + "<footer>Recorded content is shown as inert text. Request and response bodies are not "
        "included; headers are as recorded, credentials replaced by salted fingerprints.</footer>\n"
        "</body></html>\n"
    )


def write_report(html_text: str, out: Path) -> Path:
    """Write atomically with mode 0644 whatever the umask: the report is meant to be shared."""
    out = Path(out)
    directory = out.parent if str(out.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=".failcore-report-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(html_text.encode("utf-8"))
            os.fchmod(f.fileno(), REPORT_FILE_MODE)
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out
