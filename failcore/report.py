"""`failcore report`: one self-contained HTML file describing a run, safe to open and to share.

Everything in a tape came from an agent or from the servers it talked to, so every recorded string is
hostile. The page is rendered from Jinja2 templates (failcore/templates/) with autoescape on and a
`finalize` that shows control and bidi characters as escapes, so no recorded value can become markup;
numbers placed in SVG geometry are computed here. The page has no script, and a Content-Security-Policy
that forbids scripts, network access and every style but the page's own stylesheet (pinned by hash).

The tape is read as a stream: counts cover the whole run, while every list the page shows (timeline,
waterfall, blocked, warned, failed, warnings, DLP hits, LLM calls, hosts) holds at most `max_events`
entries and the page says how many were left out. Bodies are left out unless asked for (`bodies=True`):
they are shown as the tape holds them (DLP hits already masked by the recorder), within a total budget,
and the file is then written 0600 like the tape.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jinja2
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from markupsafe import Markup, escape

from failcore import __version__
from failcore.conversation import Conversation, read_conversation
from failcore.runs import RunSummary, run_events
from failcore.tape.verify import VerifyReport, verify_tape
from failcore.textsafe import printable
from failcore.views import fmt

DEFAULT_MAX_EVENTS: Final = 5000
REPORT_FILE_MODE: Final = 0o644
REPORT_WITH_BODIES_MODE: Final = 0o600
# Per body shown, and over the whole page, when bodies are included.
BODY_SHOW_CAP: Final = 16 * 1024
BODY_BUDGET: Final = 16 * 1024 * 1024
WATERFALL_MAX_ROWS: Final = 1000
_STREAM_TICKS_PER_ROW: Final = 200
# Kinds that carry no story of their own: the chain's signatures are summarised by verification.
_HIDDEN_KINDS: Final = frozenset({"checkpoint"})
# CSS class names come from these fixed tables only, never from recorded text.
_DECISION_CLASS: Final = {"ALLOW": "allow", "WARN": "warn", "BLOCK": "block"}
_OUTCOME_CLASS: Final = {"ok": "allow", "BLOCKED": "block", "FAIL": "block"}
_SEVERITY_CLASS: Final = {"critical": "block", "high": "block", "medium": "warn", "low": "muted"}

_ENV: Final = jinja2.Environment(
    loader=jinja2.PackageLoader("failcore", "templates"),
    autoescape=True,
    # Recorded events may lack any field: a missing one renders empty (events are not validated here).
    trim_blocks=True,
    lstrip_blocks=True,
    # Every {{ value }} is shown as what it is: control and bidi characters become visible escapes
    # before autoescape turns it into text. Markup (the templates' own) passes unchanged.
    finalize=lambda value: value if isinstance(value, Markup) else printable(value),
)
CSS: Final = _ENV.loader.get_source(_ENV, "report.css")[0]  # type: ignore[union-attr]


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
    max_events: int = DEFAULT_MAX_EVENTS
    bodies: bool = False
    events_read: int = 0
    # Events as shown (bodies trimmed or dropped), at most max_events.
    timeline: list[dict[str, Any]] = field(default_factory=list)
    hosts: dict[str, HostStats] = field(default_factory=dict)
    blocked: list[dict[str, Any]] = field(default_factory=list)
    warned: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    dlp_hits: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    llm_calls: list[LlmCallRow] = field(default_factory=list)
    conversations: dict[int, Conversation] = field(default_factory=dict)
    # What each list left out (section name -> count); the page states every one of them.
    omitted: dict[str, int] = field(default_factory=dict)
    body_budget_left: int = BODY_BUDGET
    bodies_dropped: int = 0
    llm_count: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = 0

    @property
    def timeline_omitted(self) -> int:
        return self.omitted.get("timeline", 0)


def _host_key(ev: dict[str, Any]) -> str:
    target = ev.get("target") or {}
    return f"{target.get('host')}:{target.get('port')}"


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def llm_call_row(ev: dict[str, Any]) -> LlmCallRow | None:
    """The COST evidence of one network event, or None when it was not an LLM call."""
    llm = ev.get("llm")
    if not isinstance(llm, dict):
        return None
    usage = _dict(llm.get("usage"))
    cost = _dict(llm.get("cost"))
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


def _indented_json(text: str) -> str | None:
    """A complete JSON object or array body laid out one value a line (easier to read than one line)."""
    if len(text) > BODY_SHOW_CAP or not text.lstrip().startswith(("{", "[")):
        return None
    try:
        return orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2).decode()
    except (orjson.JSONDecodeError, TypeError):
        return None


def _header(message: dict[str, Any], name: str) -> str | None:
    for pair in message.get("headers") or ():
        if isinstance(pair, list | tuple) and len(pair) == 2 and str(pair[0]).lower() == name:
            return str(pair[1])
    return None


class _Collector:
    """Folds a stream of events into a RunReport whose every list is bounded by max_events."""

    def __init__(self, report: RunReport) -> None:
        self._report = report
        self._limit = report.max_events

    def _keep(self, section: str, items: list[Any], make: Callable[[], Any]) -> None:
        """Append `make()` while the list has room (built only then), else count it as left out."""
        if len(items) < self._limit:
            items.append(make())
        else:
            self._report.omitted[section] = self._report.omitted.get(section, 0) + 1

    def add(self, ev: dict[str, Any]) -> None:
        report = self._report
        report.events_read += 1
        report.summary.add(ev)
        kind = ev.get("kind")
        if kind in _HIDDEN_KINDS:
            return
        # Only events the timeline shows keep (trimmed) bodies; the rest keep headers and metadata,
        # and an event no list keeps is never copied.
        slim: list[dict[str, Any]] = []

        def shown(with_bodies: bool = False) -> dict[str, Any]:
            if not slim:
                slim.append(self._shown(ev, with_bodies=with_bodies))
            return slim[0]

        self._keep("timeline", report.timeline, lambda: shown(report.bodies))
        if kind == "network":
            self._add_network(ev, shown)
        elif kind == "internal_error":
            self._keep("failed", report.failed, shown)

    def _shown(self, ev: dict[str, Any], *, with_bodies: bool) -> dict[str, Any]:
        """The event as the page shows it: bodies trimmed to what is shown, or dropped."""
        report = self._report
        shown = dict(ev)
        seq = _int_or_none(ev.get("seq"))
        llm = _dict(ev.get("llm"))
        request, response = _dict(ev.get("request")), _dict(ev.get("response"))
        if with_bodies and llm and seq is not None and report.body_budget_left > 0:
            req_body, resp_body = _dict(request.get("body")), _dict(response.get("body"))
            conv = read_conversation(
                llm.get("api"),
                req_body.get("text"),
                resp_body.get("text"),
                _header(response, "content-type"),
                request_truncated=req_body.get("truncated") is True,
                response_truncated=resp_body.get("truncated") is True,
            )
            if conv is not None and not conv.empty:
                size = sum(len(t.text) for t in (*conv.request, *conv.response))
                report.body_budget_left -= size
                report.conversations[seq] = conv
        for side, message in (("request", request), ("response", response)):
            if message:
                shown[side] = message | {"body": self._shown_body(_dict(message.get("body")), with_bodies)}
        detail = _dict(ev.get("detail"))
        if "body" in detail:
            shown["detail"] = detail | {"body": self._shown_body(_dict(detail.get("body")), with_bodies)}
        return shown

    def _shown_body(self, body: dict[str, Any], with_bodies: bool) -> dict[str, Any] | None:
        if not body:
            return None
        report = self._report
        meta = {k: v for k, v in body.items() if k not in ("text", "b64")}
        text = body.get("text")
        if not with_bodies or not isinstance(text, str):
            return meta
        if report.body_budget_left <= 0:
            report.bodies_dropped += 1
            return meta | {"dropped": True}
        indented = _indented_json(text) if not body.get("truncated") else None
        if indented is not None:
            text = indented
        shown = text[:BODY_SHOW_CAP]
        report.body_budget_left -= len(shown)
        return meta | {"text": shown, "cut_here": len(shown) < len(text), "indented": indented is not None}

    def _add_network(self, ev: dict[str, Any], shown: Callable[[], dict[str, Any]]) -> None:
        report = self._report
        key = _host_key(ev)
        stats = report.hosts.get(key)
        if stats is None:
            if len(report.hosts) >= self._limit:
                report.omitted["hosts"] = report.omitted.get("hosts", 0) + 1
                stats = HostStats(key)  # counted in the summary, not shown
            else:
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
            self._keep("blocked", report.blocked, shown)
        elif decision == "WARN":
            stats.warned += 1
            self._keep("warned", report.warned, shown)
        if outcome == "FAIL":
            stats.failed += 1
            self._keep("failed", report.failed, shown)
        for warning in ev.get("warnings") or ():
            if isinstance(warning, dict):
                self._keep("warnings", report.warnings, lambda w=warning: (shown(), w))
        for hit in _dict(ev.get("dlp")).get("hits") or ():
            if isinstance(hit, dict):
                self._keep("dlp", report.dlp_hits, lambda h=hit: (shown(), h))
        call = llm_call_row(ev)
        if call is not None:
            report.llm_count += 1
            if call.usage_known:
                report.tokens_in += call.input_tokens or 0
                report.tokens_out += call.output_tokens or 0
            if call.cost_usd is None:
                report.unpriced_calls += 1
            else:
                report.cost_usd += call.cost_usd
            self._keep("llm", report.llm_calls, lambda c=call: c)


def collect_report(
    tape_dir: Path,
    run: str,
    *,
    public_key: Ed25519PublicKey | None = None,
    max_events: int = DEFAULT_MAX_EVENTS,
    bodies: bool = False,
    progress: Callable[[str], None] | None = None,
) -> RunReport:
    """Read one run from the tape (streamed) and verify the whole tape. Raises ReportError for an
    unknown run. `progress`, when given, is told what is happening every 10,000 events."""
    tape_dir = Path(tape_dir)
    if not tape_dir.is_dir():
        raise ReportError(f"no tape at {tape_dir}")
    if max_events < 1:
        raise ReportError("--max-events must be at least 1")
    report = RunReport(
        run=run,
        tape=tape_dir,
        summary=RunSummary(run=run),
        verification=VerifyReport(),
        generated=dt.datetime.now(dt.UTC).timestamp(),
        max_events=max_events,
        bodies=bodies,
    )
    collector = _Collector(report)
    for ev in run_events(tape_dir, run):
        collector.add(ev)
        if progress is not None and report.events_read % 10_000 == 0:
            progress(f"reading run {run}: {report.events_read:,} events")
    if not report.events_read:
        raise ReportError(f"no run {run!r} in {tape_dir}")
    if progress is not None:
        progress(f"read {report.events_read:,} events of run {run}; verifying the whole tape")
    report.verification = verify_tape(tape_dir, public_key=public_key)
    return report


# ---------------------------------------------------------------- formatting (template filters)


def _utc(ts: object, *, with_date: bool = True) -> str:
    number = _number_or_none(ts)
    if number is None:
        return "-"
    moment = dt.datetime.fromtimestamp(number, dt.UTC)
    if with_date:
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return moment.strftime("%H:%M:%S.%f")[:-3]


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min {secs} s" if hours else f"{minutes} min {secs} s"


def _size(n: object) -> str:
    return fmt.size(_int_or_none(n) or 0)


def _usd(value: float | None) -> str:
    return fmt.usd(value, missing="-", exact=True)


def _tokens(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _ms(value: object) -> str:
    number = _number_or_none(value)
    return "-" if number is None else f"{number:,.0f}"


def _multiline(value: object) -> Markup:
    """Body text in a <pre>: newlines kept, every other control character shown as an escape."""
    return escape(printable(value, keep_newlines=True))


def _event_summary(ev: dict[str, Any]) -> str:
    kind = str(ev.get("kind") or "")
    if kind == "network":
        return str(ev.get("summary") or ev.get("path") or "")
    detail = _dict(ev.get("detail"))
    if kind == "websocket":
        return f"[ws {detail.get('direction') or ''} #{detail.get('index') or ''}] {ev.get('path') or ''}"
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


def _outcome_class(ev: dict[str, Any]) -> str:
    return _OUTCOME_CLASS.get(str(ev.get("outcome")), "block" if ev.get("kind") == "internal_error" else "")


def _decision_text(ev: dict[str, Any]) -> str:
    decision = str(ev.get("decision") or "")
    return decision + ("*" if ev.get("would_block") and decision == "WARN" else "")


def _event_time(ev: dict[str, Any]) -> float | None:
    ts = ev.get("ts_end") if ev.get("kind") == "run_end" else ev.get("ts_start") or ev.get("ts")
    return _number_or_none(ts)


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


def _header_pairs(message: object) -> list[tuple[str, str]]:
    headers = _dict(message).get("headers") or ()
    return [(str(h[0]), str(h[1])) for h in headers if isinstance(h, list | tuple) and len(h) == 2]


def _stream_text(ev: dict[str, Any]) -> str | None:
    stream = _dict(ev.get("stream")) or _dict(_dict(ev.get("response")).get("stream"))
    if not stream:
        return None
    chunks = [c for c in stream.get("chunks") or () if isinstance(c, list | tuple) and len(c) == 2]
    count = _int_or_none(stream.get("chunk_count")) or len(chunks)
    last = max((_number_or_none(c[0]) or 0.0 for c in chunks), default=0.0)
    more = " (first chunks only)" if stream.get("chunks_truncated") else ""
    return f"{count:,} chunk(s), the last {last:,.0f} ms after the response headers{more}"


# ---------------------------------------------------------------- pictures (numbers only reach SVG)

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


def _waterfall(r: RunReport) -> dict[str, Any] | None:
    """A browser-network-panel view: one row per exchange, waiting then receiving, chunks as ticks."""
    exchanges = [ev for ev in r.timeline if ev.get("kind") == "network"]
    left_out = max(0, len(exchanges) - WATERFALL_MAX_ROWS)
    exchanges = exchanges[:WATERFALL_MAX_ROWS]
    times = [(ev, _number_or_none(ev.get("ts_start"))) for ev in exchanges]
    times = [(ev, t) for ev, t in times if t is not None]
    if not times:
        return None
    t0 = min(t for _, t in times)
    ends = []
    for ev, t in times:
        end = _number_or_none(ev.get("ts_end"))
        latency = _number_or_none(ev.get("latency_ms"))
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
        ttfb = _number_or_none(ev.get("ttfb_ms"))
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
        stream = _dict(ev.get("stream")) or _dict(_dict(ev.get("response")).get("stream"))
        chunks = [c for c in stream.get("chunks") or () if isinstance(c, list | tuple) and len(c) == 2]
        chunk_x = []
        base = begin_ms + (ttfb or 0.0)
        for offset, _chunk_size in chunks[:_STREAM_TICKS_PER_ROW]:
            offset_ms = _number_or_none(offset)
            if offset_ms is not None:
                chunk_x.append(round(_WF_LABEL + min(span_ms, base + offset_ms) * scale, 1))
        host = _dict(ev.get("target")).get("host", "")
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
            f" · first byte {_ms(ttfb)} ms · total {_ms(total_ms)} ms"
            + (f" · {len(chunks)} chunk(s)" if chunks else "")
            + (f" · {why[state]}" if state in why else f" · {decision} {ev.get('status') or ''}")
        )
        rows.append(
            {
                "seq": _int_or_none(ev.get("seq")),
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


def _charts(r: RunReport) -> list[dict[str, Any]]:
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
    charts = (_bar_chart(token_bars, "Tokens per call"), _bar_chart(cost_bars, "Cost per call (USD)"))
    return [c for c in charts if c is not None]


# ---------------------------------------------------------------- page


def _verification_view(v: VerifyReport) -> dict[str, Any]:
    head = f"{v.lines} lines in {v.segments} segment(s), {v.checkpoints} signed checkpoint(s)"
    if not v.ok:
        b = v.first_break
        where = f"{b.segment}:{b.line}" if b else "unknown position"
        verdict, css = f"BROKEN at {where}", "bad"
        lines = [f"{head}."]
        if b:
            lines.append(f"First break ({b.kind}): {b.message}")
        lines.append("Nothing after the break can be trusted to be what was recorded.")
    elif v.truncated:
        first_segment, first_line = v.truncated[0]
        verdict, css = f"OK, truncated at {first_segment}:{first_line}", "partial"
        lines = [f"{head}; chain intact."]
        lines += [
            f"{segment} line {line} is an incomplete final line (the writer was killed mid-write); "
            "everything before it verifies."
            for segment, line in v.truncated
        ]
    else:
        verdict, css = "OK", "ok"
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
    return {"verdict": verdict, "css": css, "lines": lines}


def _summary_pairs(r: RunReport) -> list[tuple[str, object]]:
    s = r.summary
    span = "-"
    if s.started is not None:
        span = f"{_utc(s.started)} → {_utc(s.ended)}"
        if s.ended is not None:
            span += f" ({_duration(max(0.0, s.ended - s.started))})"
    fail_reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.fail_reasons.items()))
    return [
        ("run", r.run),
        ("time range", span),
        ("policy", s.policy or "-"),
        ("mode", s.mode or "-"),
        ("requests", f"{s.requests:,}"),
        ("blocked", f"{s.blocked:,}"),
        ("warned", f"{s.warned:,} ({s.would_block:,} would be blocked in enforce mode)"),
        ("failed", f"{s.failed:,}" + (f" ({fail_reasons})" if fail_reasons else "")),
        ("bytes", f"{_size(s.bytes_out)} out, {_size(s.bytes_in)} in"),
        ("LLM calls", f"{r.llm_count:,}"),
        ("tokens", f"{r.tokens_in:,} in, {r.tokens_out:,} out" if r.llm_count else "-"),
        ("cost", _cost_text(r)),
        ("websocket messages", f"{s.websocket_messages:,}"),
        ("internal errors", f"{s.internal_errors:,}"),
        ("dropped events", f"{s.dropped:,}"),
        ("tape", str(r.tape)),
    ]


def _cost_text(r: RunReport) -> str:
    cost = _usd(r.cost_usd) if r.unpriced_calls < r.llm_count else "-"
    if r.unpriced_calls:
        cost += f" (+{r.unpriced_calls} call(s) without a price)"
    return cost


_OMITTED_LABELS: Final = {
    "timeline": "timeline events (and their details)",
    "hosts": "exchanges with hosts past the first {n} (counted in the summary)",
    "blocked": "blocked exchanges",
    "warned": "policy warnings",
    "failed": "failures",
    "warnings": "other warnings",
    "dlp": "DLP hits",
    "llm": "LLM calls (counted in the totals)",
}


def render_report(r: RunReport) -> str:
    omitted = [
        (count, _OMITTED_LABELS.get(name, name).format(n=r.max_events)) for name, count in r.omitted.items()
    ]
    cost_card = _usd(r.cost_usd) if r.unpriced_calls < r.llm_count else "-"
    template = _ENV.get_template("report.html.j2")
    return template.render(
        r=r,
        s=r.summary,
        css=Markup(CSS),
        csp=content_security_policy(CSS),
        version=__version__,
        generated=_utc(r.generated),
        summary_pairs=_summary_pairs(r),
        cards=[
            ("requests", f"{r.summary.requests:,}", ""),
            ("blocked", f"{r.summary.blocked:,}", "block" if r.summary.blocked else ""),
            ("warned", f"{r.summary.warned:,}", "warn" if r.summary.warned else ""),
            ("failed", f"{r.summary.failed:,}", "block" if r.summary.failed else ""),
            ("tokens", f"{r.tokens_in + r.tokens_out:,}", ""),
            ("cost", cost_card, ""),
        ],
        verification=_verification_view(r.verification),
        waterfall=_waterfall(r),
        charts=_charts(r),
        hosts=sorted(r.hosts.values(), key=lambda h: (-h.requests, h.host)),
        omitted=omitted,
        first_seq=next((ev.get("seq") for ev in r.timeline if ev.get("kind") == "network"), None),
        body_cap=_size(BODY_SHOW_CAP),
        **_HELPERS,
    )


_HELPERS: Final = {
    "utc": _utc,
    "size": _size,
    "usd": _usd,
    "tokens": _tokens,
    "ms": _ms,
    "multiline": _multiline,
    "event_summary": _event_summary,
    "outcome_text": _outcome_text,
    "outcome_class": _outcome_class,
    "decision_text": _decision_text,
    "decision_class": lambda value: _DECISION_CLASS.get(str(value), ""),
    "severity_class": lambda value: _SEVERITY_CLASS.get(str(value), ""),
    "event_time": _event_time,
    "notes": _notes,
    "header_pairs": _header_pairs,
    "stream_text": _stream_text,
    "host_key": _host_key,
    "llm_call_row": llm_call_row,
}


def write_report(html_text: str, out: Path, *, mode: int = REPORT_FILE_MODE) -> Path:
    """Write atomically with `mode` whatever the umask (0644 by default: the report is meant to be
    shared; 0600 when it holds bodies, like the tape they come from)."""
    out = Path(out)
    directory = out.parent if str(out.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=".failcore-report-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(html_text.encode("utf-8"))
            os.fchmod(f.fileno(), mode)
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out
