"""How recorded values read on the page: the functions the report's templates call (FILTERS).
Each returns text; the templates' autoescape and `finalize` make it inert."""

from __future__ import annotations

from typing import Any, Final

from markupsafe import Markup, escape

from failcore.report.collect import as_dict, as_list, host_key, int_or_none, llm_call_row, number_or_none
from failcore.textsafe import printable
from failcore.views import fmt
from failcore.views import runtime as rt

# CSS class names come from these fixed tables only, never from recorded text.
_DECISION_CLASS: Final = {"ALLOW": "allow", "WARN": "warn", "BLOCK": "block"}
_OUTCOME_CLASS: Final = {"ok": "allow", "BLOCKED": "block", "FAIL": "block"}
_SEVERITY_CLASS: Final = {"critical": "block", "high": "block", "medium": "warn", "low": "muted"}


def fmt_utc(ts: object, *, with_date: bool = True) -> str:
    return fmt.when(number_or_none(ts), date=with_date, millis=not with_date, utc=True)


def fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min {secs} s" if hours else f"{minutes} min {secs} s"


def fmt_size(n: object) -> str:
    return fmt.size(int_or_none(n) or 0)


def fmt_usd(value: float | None) -> str:
    return fmt.usd(value, missing="-", exact=True)


def fmt_tokens(value: int | None) -> str:
    return fmt.count(value)


def fmt_ms(value: object) -> str:
    number = number_or_none(value)
    return "-" if number is None else f"{number:,.0f}"


def multiline(value: object) -> Markup:
    """Body text in a <pre>: newlines kept, every other control character shown as an escape."""
    return escape(printable(value, keep_newlines=True))


def event_summary(ev: dict[str, Any]) -> str:
    kind = str(ev.get("kind") or "")
    if kind == "network":
        return str(ev.get("summary") or ev.get("path") or "")
    if kind in rt.RUNTIME_KINDS:
        return rt.describe(ev)
    detail = as_dict(ev.get("detail"))
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


def outcome_text(ev: dict[str, Any]) -> str:
    outcome = ev.get("outcome") or ""
    if outcome == "FAIL":
        return str(ev.get("fail_reason") or outcome)
    if ev.get("kind") == "internal_error":
        return "internal_error"
    cut = ev.get("cut")
    if isinstance(cut, dict):
        return f"{outcome} (cut: {cut.get('reason')})"
    return str(outcome)


def outcome_class(ev: dict[str, Any]) -> str:
    return _OUTCOME_CLASS.get(str(ev.get("outcome")), "block" if ev.get("kind") == "internal_error" else "")


def decision_text(ev: dict[str, Any]) -> str:
    decision = str(ev.get("decision") or "")
    return decision + ("*" if ev.get("would_block") and decision == "WARN" else "")


def event_time(ev: dict[str, Any]) -> float | None:
    ts = ev.get("ts_end") if ev.get("kind") == "run_end" else ev.get("ts_start") or ev.get("ts")
    return number_or_none(ts)


def notes(ev: dict[str, Any]) -> str:
    notes: list[str] = []
    call = llm_call_row(ev)
    if call is not None:
        notes.append(
            f"LLM {call.model or '?'} {fmt_tokens(call.total_tokens)} tok {fmt_usd(call.cost_usd)}"
            if call.usage_known
            else f"LLM {call.model or '?'} usage unknown"
        )
    if hits := as_list(as_dict(ev.get("dlp")).get("hits")):
        notes.append(f"DLP {len(hits)} hit(s)")
    if warnings := as_list(ev.get("warnings")):
        notes.append(f"{len(warnings)} warning(s)")
    return "; ".join(notes)


def issue_what(ev: dict[str, Any]) -> str:
    """The path cell of the blocked/warned/failed tables: the request path, or what a tool call or one
    of its effects did."""
    if ev.get("kind") in rt.RUNTIME_KINDS:
        return rt.describe(ev)
    return str(ev.get("path") or "-")


def where(ev: dict[str, Any]) -> str:
    """The host cell of the warnings and DLP tables: host:port, or the kind of a runtime event."""
    kind = ev.get("kind")
    if kind in rt.RUNTIME_KINDS:
        return rt.connect_target(ev) if kind == "connect" else str(kind)
    return host_key(ev)


def header_pairs(message: object, field: str = "headers") -> list[tuple[str, str]]:
    """A recorded message's headers (or, `field="trailers"`, its trailers) as (name, value) pairs."""
    headers = as_dict(message).get(field) or ()
    return [(str(h[0]), str(h[1])) for h in headers if isinstance(h, list | tuple) and len(h) == 2]


def stream_text(ev: dict[str, Any]) -> str | None:
    stream = as_dict(ev.get("stream")) or as_dict(as_dict(ev.get("response")).get("stream"))
    if not stream:
        return None
    chunks = [c for c in stream.get("chunks") or () if isinstance(c, list | tuple) and len(c) == 2]
    count = int_or_none(stream.get("chunk_count")) or len(chunks)
    last = max((number_or_none(c[0]) or 0.0 for c in chunks), default=0.0)
    more = " (first chunks only)" if stream.get("chunks_truncated") else ""
    return f"{count:,} chunk(s), the last {last:,.0f} ms after the response headers{more}"


FILTERS: Final = {
    "utc": fmt_utc,
    "size": fmt_size,
    "usd": fmt_usd,
    "tokens": fmt_tokens,
    "ms": fmt_ms,
    "multiline": multiline,
    "event_summary": event_summary,
    "outcome_text": outcome_text,
    "outcome_class": outcome_class,
    "decision_text": decision_text,
    "decision_class": lambda value: _DECISION_CLASS.get(str(value), ""),
    "severity_class": lambda value: _SEVERITY_CLASS.get(str(value), ""),
    "event_time": event_time,
    "notes": notes,
    "header_pairs": header_pairs,
    "stream_text": stream_text,
    "host_key": host_key,
    "issue_what": issue_what,
    "where": where,
    "is_runtime": rt.is_runtime,
    "runtime_pairs": rt.detail_pairs,
    "tool_name": rt.tool_name,
    "tool_args": lambda ev: rt.args_summary(rt.tool_args(ev), 200),
    "tool_effects": rt.effects_text,
    "tool_drift": rt.contract_drift,
    "tool_result": rt.result_summary,
    "llm_call_row": llm_call_row,
}
