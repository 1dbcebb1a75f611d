"""The report page: the Jinja2 environment (autoescape on, hostile text shown as escapes), its strict
Content-Security-Policy, rendering and writing the file."""

from __future__ import annotations

import base64
import hashlib
import html
import os
import tempfile
from pathlib import Path
from typing import Any, Final

import jinja2
from markupsafe import Markup

from failcore import __version__
from failcore.report.collect import BODY_SHOW_CAP, RunReport, paused_gc
from failcore.report.filters import FILTERS, fmt_duration, fmt_size, fmt_usd, fmt_utc
from failcore.report.pictures import charts, waterfall
from failcore.tape.verify import VerifyReport
from failcore.textsafe import printable
from failcore.views.runtime import effects_line, tool_calls_line

REPORT_FILE_MODE: Final = 0o644
REPORT_WITH_BODIES_MODE: Final = 0o600

_DICT_ATTRIBUTES: Final = frozenset(dir(dict))


def _finalize(value: object) -> object:
    """Every {{ value }} is shown as what it is: control and bidi characters become visible escapes
    before autoescape turns it into text. Markup (the templates' own) passes unchanged, and so do
    ints (their text is digits and a sign only; autoescape writes the same characters)."""
    if type(value) is int or isinstance(value, Markup):
        return value
    return printable(value)


class _Environment(jinja2.Environment):
    """Jinja2's `getattr` for a recorded event (a dict) without its exception on every field.

    Jinja tries getattr() first and falls back to obj[name]; for a dict, getattr() only finds dict's
    own attributes (`items`, `get`...), so for any other name the item lookup is the same answer."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


_ENV: Final = _Environment(
    loader=jinja2.PackageLoader("failcore", "templates"),
    autoescape=True,
    # Recorded events may lack any field: a missing one renders empty (events are not validated here).
    trim_blocks=True,
    lstrip_blocks=True,
    finalize=_finalize,
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
        span = f"{fmt_utc(s.started)} → {fmt_utc(s.ended)}"
        if s.ended is not None:
            span += f" ({fmt_duration(max(0.0, s.ended - s.started))})"
    fail_reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.fail_reasons.items()))
    pairs: list[tuple[str, object]] = [
        ("run", r.run),
        ("time range", span),
        ("policy", s.policy or "-"),
        ("mode", s.mode or "-"),
        ("requests", f"{s.requests:,}"),
        ("blocked", f"{s.blocked:,}"),
        ("warned", f"{s.warned:,} ({s.would_block:,} would be blocked in enforce mode)"),
        ("failed", f"{s.failed:,}" + (f" ({fail_reasons})" if fail_reasons else "")),
        ("bytes", f"{fmt_size(s.bytes_out)} out, {fmt_size(s.bytes_in)} in"),
        ("LLM calls", f"{r.llm_count:,}"),
        ("tokens", f"{r.tokens_in:,} in, {r.tokens_out:,} out" if r.llm_count else "-"),
        ("cost", _cost_text(r)),
        ("websocket messages", f"{s.websocket_messages:,}"),
        ("internal errors", f"{s.internal_errors:,}"),
        ("dropped events", f"{s.dropped:,}"),
        ("tape", str(r.tape)),
    ]
    if s.tool_calls or s.effects:  # runs of the runtime API (failcore.run / guard) only
        summary = s.to_dict()
        pairs[-1:-1] = [("tool calls", tool_calls_line(summary)), ("effects", effects_line(summary))]
    return pairs


def _cost_text(r: RunReport) -> str:
    cost = fmt_usd(r.cost_usd) if r.unpriced_calls < r.llm_count else "-"
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
    "tools": "tool calls (counted in the summary)",
}


def _tool_cards(r: RunReport) -> list[tuple[str, str, str]]:
    """Cards of a run that made guarded tool calls (none for a proxy-only run)."""
    s = r.summary
    if not s.tool_calls and not s.effects:
        return []
    blocked = s.tool_blocked + s.effects_blocked
    return [
        ("tool calls", f"{s.tool_calls:,}", ""),
        ("tool calls / effects blocked", f"{blocked:,}", "block" if blocked else ""),
    ]


def render_report(r: RunReport) -> str:
    omitted = [
        (count, _OMITTED_LABELS.get(name, name).format(n=r.max_events)) for name, count in r.omitted.items()
    ]
    cost_card = fmt_usd(r.cost_usd) if r.unpriced_calls < r.llm_count else "-"
    template = _ENV.get_template("report.html.j2")
    with paused_gc():
        return _render(template, r, omitted, cost_card)


def _render(template: jinja2.Template, r: RunReport, omitted: list[tuple[int, str]], cost_card: str) -> str:
    return template.render(
        r=r,
        s=r.summary,
        css=Markup(CSS),
        csp=content_security_policy(CSS),
        version=__version__,
        generated=fmt_utc(r.generated),
        summary_pairs=_summary_pairs(r),
        cards=[
            ("requests", f"{r.summary.requests:,}", ""),
            ("blocked", f"{r.summary.blocked:,}", "block" if r.summary.blocked else ""),
            ("warned", f"{r.summary.warned:,}", "warn" if r.summary.warned else ""),
            ("failed", f"{r.summary.failed:,}", "block" if r.summary.failed else ""),
            ("tokens", f"{r.tokens_in + r.tokens_out:,}", ""),
            ("cost", cost_card, ""),
            *_tool_cards(r),
        ],
        verification=_verification_view(r.verification),
        waterfall=waterfall(r),
        charts=charts(r),
        hosts=sorted(r.hosts.values(), key=lambda h: (-h.requests, h.host)),
        omitted=omitted,
        first_seq=next((ev.get("seq") for ev in r.timeline if ev.get("kind") == "network"), None),
        body_cap=fmt_size(BODY_SHOW_CAP),
        **FILTERS,
    )


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
