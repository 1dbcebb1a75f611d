"""Pure formatting for the viewer: cells of the lists and the full view of one event, as rich Text.

Everything recorded is hostile: it only ever reaches the screen through `safe_text`/`printable`, as
Text objects (never markup strings), so ANSI sequences, control characters and Rich/Textual markup in
paths, headers and bodies are shown literally.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson
from rich.text import Text

from failcore.framing import frames_of_body
from failcore.runs import RunSummary
from failcore.textsafe import printable, safe_text
from failcore.tui.index import EventRow
from failcore.tui.lines import ChainStatus
from failcore.views import fmt
from failcore.views import runtime as rt

DECISION_STYLE: Final = {"ALLOW": "green", "WARN": "yellow", "BLOCK": "bold red"}
BODY_DISPLAY_LIMIT: Final = 200_000
DASH: Final = "-"


def fmt_time(ts: float | None, *, date: bool = False, millis: bool = True) -> str:
    return fmt.when(ts, date=date, millis=millis)


def fmt_tokens(tokens: int | None) -> str:
    return fmt.count(tokens, compact=True, missing=DASH)


def fmt_cost(usd: float | None) -> str:
    """The cost column: views.fmt.usd's 7-cell form (its docstring says why it differs)."""
    return fmt.usd(usd, missing=DASH, cell=True)


def fmt_latency(ms: float | None) -> str:
    return DASH if ms is None else f"{ms:.0f}"


def status_class(row: EventRow) -> str:
    """2xx/3xx/4xx/5xx, or "error" for an exchange without a status (refused, failed, cut)."""
    if row.status is not None:
        return f"{row.status // 100}xx"
    return "error" if row.kind == "network" and (row.outcome == "FAIL" or row.decision != "BLOCK") else ""


def run_cells(stats: RunSummary) -> list[Text]:
    return [
        Text(fmt_time(stats.started, date=True, millis=False)),
        safe_text(stats.run),
        Text(str(stats.requests)),
        Text(str(stats.blocked), style="bold red" if stats.blocked else ""),
        Text(str(stats.warned), style="yellow" if stats.warned else ""),
        Text(str(stats.failed), style="red" if stats.failed else ""),
        Text(fmt_tokens(stats.tokens)),
        Text(fmt_cost(stats.priced_usd)),
        # The runtime columns (tools, effects): shown once a run made guarded tool calls.
        Text(
            str(stats.tool_calls) + (f"/{stats.tool_blocked}" if stats.tool_blocked else ""),
            style="bold red" if stats.tool_blocked else "",
        ),
        Text(
            str(stats.effects) + (f"/{stats.effects_blocked}" if stats.effects_blocked else ""),
            style="bold red" if stats.effects_blocked else "",
        ),
    ]


def decision_text(row: EventRow) -> Text:
    if row.kind not in ("network", "websocket", *rt.RUNTIME_KINDS):
        return Text(row.kind if row.kind == "internal_error" else "", style="red")
    shown = row.decision + ("*" if row.would_block and row.decision == "WARN" else "")
    if row.outcome == "FAIL":
        return Text("FAIL", style="red")
    return Text(shown, style=DECISION_STYLE.get(row.decision, ""))


def event_cells(row: EventRow) -> list[Text]:
    return [
        Text(fmt_time(row.ts, millis=False)),
        decision_text(row),
        Text(rt.KIND_LABELS[row.kind], style="cyan") if row.kind in rt.KIND_LABELS else safe_text(row.method),
        safe_text(row.host),
        safe_text(row.path),
        Text(
            DASH if row.status is None else str(row.status), style="red" if (row.status or 0) >= 500 else ""
        ),
        Text(fmt_latency(row.latency_ms)),
        Text(fmt_tokens(row.tokens)),
        Text(fmt_cost(row.cost_usd)),
        Text(
            DASH if row.dlp_hits is None else str(row.dlp_hits), style="bold magenta" if row.dlp_hits else ""
        ),
    ]


# --- SSE ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: str


def parse_sse(text: str) -> list[SseEvent]:
    """Server-sent events of a recorded stream body, framed by failcore.framing (the one SSE decoder);
    an event too big to keep whole shows its last bytes."""
    return [
        SseEvent(frame.event or "message", (frame.data or frame.tail or b"").decode("utf-8", "replace"))
        for frame in frames_of_body(text)
    ]


def stream_text(events: Iterable[SseEvent]) -> str:
    """The text an LLM streamed, joined from OpenAI chat/responses and Anthropic message deltas."""
    parts: list[str] = []
    for ev in events:
        try:
            payload = orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(payload, dict):
            parts.append(_delta_text(payload))
    return "".join(parts)


def _delta_text(payload: dict[str, Any]) -> str:
    choices = payload.get("choices")
    if isinstance(choices, list):
        text = ""
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                text += delta["content"]
        return text
    delta = payload.get("delta")
    if payload.get("type") == "content_block_delta" and isinstance(delta, dict):
        return delta.get("text") if isinstance(delta.get("text"), str) else ""
    if payload.get("type") == "response.output_text.delta" and isinstance(delta, str):
        return delta
    return ""


# --- one event -------------------------------------------------------------------------------


class _Doc:
    """Accumulates a Text, every recorded value added via safe_text."""

    def __init__(self) -> None:
        self.text = Text()

    def heading(self, title: str) -> None:
        if self.text.plain:
            self.text.append("\n")
        self.text.append(f"── {title} ", style="bold cyan")
        self.text.append("\n")

    def field(self, name: str, value: object, style: str = "") -> None:
        self.text.append(f"{name}: ", style="bold")
        self.text.append(safe_text(DASH if value is None else value, style))
        self.text.append("\n")

    def block(self, value: str, style: str = "") -> None:
        self.text.append(safe_text(value, style, keep_newlines=True))
        if not value.endswith("\n"):
            self.text.append("\n")


def render_event(event: dict[str, Any] | None, chain: ChainStatus, row: EventRow) -> Text:
    doc = _Doc()
    _render_chain(doc, chain, row)
    if event is None:
        doc.heading("line")
        doc.field("error", "this line is not valid JSON", "bold red")
        return doc.text
    doc.heading(f"{event.get('kind', '?')} #{event.get('seq', '?')}")
    doc.field("run", event.get("run"))
    doc.field("time", fmt_time(row.ts, date=True))
    if event.get("kind") in ("network", "websocket"):
        _render_exchange(doc, event)
    elif event.get("kind") in rt.RUNTIME_KINDS:
        _render_runtime(doc, event)
    else:
        doc.heading("detail")
        doc.block(_pretty(event.get("detail") or {}))
        if event.get("error"):
            doc.field("error", event.get("error"), "red")
    return doc.text


def _render_chain(doc: _Doc, chain: ChainStatus, row: EventRow) -> None:
    doc.heading("chain")
    doc.field("line", f"{row.segment} @ byte {row.offset}")
    if not chain.well_formed:
        doc.field("status", "BROKEN: not a well-formed tape line", "bold red")
        return
    if chain.hash_ok:
        doc.field("h", f"OK (recomputed {chain.computed_hash[:16]}…)", "green")
    else:
        doc.field("h", f"MISMATCH recorded {chain.recorded_hash} computed {chain.computed_hash}", "bold red")
    if chain.prev_ok:
        doc.field("prev", f"OK (links to {chain.expected_prev[:16]}…)", "green")
    else:
        doc.field("prev", f"BROKEN recorded {chain.recorded_prev} expected {chain.expected_prev}", "bold red")


def _render_verdict(doc: _Doc, event: dict[str, Any]) -> None:
    """Decision, rule, reason and outcome: the same fields for an exchange and a tool call."""
    decision = event.get("decision")
    doc.field("decision", decision, DECISION_STYLE.get(str(decision), ""))
    doc.field("rule", event.get("rule"))
    doc.field("reason", event.get("reason"))
    doc.field("would_block", event.get("would_block"))
    doc.field("outcome", event.get("outcome"), "red" if event.get("outcome") != "ok" else "green")
    if event.get("fail_reason") or event.get("error"):
        doc.field("fail_reason", event.get("fail_reason"), "red")
        doc.field("error", event.get("error"), "red")


def _render_exchange(doc: _Doc, event: dict[str, Any]) -> None:
    target = event.get("target") if isinstance(event.get("target"), dict) else {}
    _render_verdict(doc, event)
    doc.field("target", f"{target.get('scheme')}://{target.get('host')}:{target.get('port')}")
    doc.field("request", f"{event.get('method') or ''} {event.get('path') or ''}".strip())
    doc.field("status", event.get("status"))
    doc.field(
        "latency", f"{fmt_latency(event.get('latency_ms'))} ms (ttfb {fmt_latency(event.get('ttfb_ms'))} ms)"
    )
    doc.field("bytes", f"{event.get('bytes_out')} out, {event.get('bytes_in')} in")
    _render_llm(doc, event.get("llm"))
    _render_dlp(doc, event.get("dlp"))
    for warning in event.get("warnings") or []:
        if isinstance(warning, dict):
            doc.field("warning", f"{warning.get('reason')}: {warning.get('message')}", "yellow")
    if isinstance(event.get("cut"), dict):
        cut = event["cut"]
        doc.field(
            "cut", f"{cut.get('reason')} at {cut.get('at_bytes')} bytes {cut.get('detail') or ''}", "red"
        )
    if event.get("kind") == "websocket":
        detail = event.get("detail") if isinstance(event.get("detail"), dict) else {}
        doc.heading(f"websocket {detail.get('direction')} #{detail.get('index')} ({detail.get('opcode')})")
        _render_body(doc, detail.get("body"), "")
    for name in ("request", "response"):
        _render_message(doc, name, event.get(name))
    stream = event.get("stream")
    if isinstance(stream, dict):
        _render_stream_timing(doc, stream)


def _render_runtime(doc: _Doc, event: dict[str, Any]) -> None:
    """A tool call or one of its effects (fs, exec, connect): the decision, then what it did."""
    _render_verdict(doc, event)
    doc.field("duration", f"{fmt_latency(event.get('latency_ms'))} ms")
    doc.heading(str(event.get("kind")))
    for name, value in rt.detail_pairs(event):
        doc.field(name, value, "yellow" if name == "contract drift" else "")
    _render_dlp(doc, event.get("dlp"))
    for warning in event.get("warnings") or []:
        if isinstance(warning, dict):
            code = warning.get("code") or warning.get("reason")
            doc.field("warning", f"{code}: {warning.get('message')}", "yellow")


def _render_llm(doc: _Doc, llm: object) -> None:
    if not isinstance(llm, dict):
        return
    usage = llm.get("usage") if isinstance(llm.get("usage"), dict) else {}
    cost = llm.get("cost") if isinstance(llm.get("cost"), dict) else {}
    doc.heading("llm")
    doc.field("provider", f"{llm.get('provider')} {llm.get('api')}")
    doc.field("model", f"{llm.get('request_model')} → {llm.get('response_model')}")
    doc.field("tokens", f"{_dash(usage.get('input_tokens'))} in, {_dash(usage.get('output_tokens'))} out")
    usd = cost.get("usd")
    doc.field("cost", f"${fmt_cost(usd)}" if isinstance(usd, int | float) else f"- ({cost.get('reason')})")
    doc.field("finish", llm.get("finish_reason"))


def _render_dlp(doc: _Doc, dlp: object) -> None:
    if not isinstance(dlp, dict):
        return
    hits = dlp.get("hits") if isinstance(dlp.get("hits"), list) else []
    doc.heading(f"DLP: {len(hits)} hit(s){' (truncated)' if dlp.get('truncated') else ''}")
    for hit in hits:
        if not isinstance(hit, dict):
            continue
        doc.text.append(safe_text(f"[{hit.get('severity')}] {hit.get('rule')}", "bold magenta"))
        doc.text.append(safe_text(f" at {hit.get('location')}: "))
        doc.text.append(safe_text(hit.get("preview"), "reverse bold magenta"))
        doc.text.append(safe_text(f"  action {hit.get('action')}  {hit.get('fingerprint')}", "dim"))
        doc.text.append("\n")


def _render_message(doc: _Doc, name: str, message: object) -> None:
    if not isinstance(message, dict):
        return
    doc.heading(f"{name} ({message.get('http_version')})")
    content_type = ""
    for pair in message.get("headers") or []:
        if isinstance(pair, list) and len(pair) == 2:
            doc.text.append(safe_text(pair[0], "bold"))
            doc.text.append(": ")
            doc.text.append(safe_text(pair[1]))
            doc.text.append("\n")
            if str(pair[0]).lower() == "content-type":
                content_type = str(pair[1]).lower()
    _render_body(doc, message.get("body"), content_type)
    trailers = [p for p in message.get("trailers") or [] if isinstance(p, list) and len(p) == 2]
    if trailers:
        doc.text.append("trailers:\n", style="bold")
        for name, value in trailers:
            doc.text.append(safe_text(name, "bold"))
            doc.text.append(": ")
            doc.text.append(safe_text(value))
            doc.text.append("\n")


def _render_body(doc: _Doc, body: object, content_type: str) -> None:
    if not isinstance(body, dict):
        doc.text.append(Text("(no body)\n", style="dim"))
        return
    notes = [f"{body.get('size')} bytes"]
    if body.get("encoding"):
        notes.append(f"encoding {body.get('encoding')}")
    if body.get("truncated"):
        notes.append(f"truncated at {body.get('cap')}")
    if body.get("decode_error"):
        notes.append(f"decode error {body.get('decode_error')}")
    doc.text.append(safe_text(f"body: {', '.join(str(n) for n in notes)}", "dim"))
    doc.text.append("\n")
    if body.get("binary"):
        doc.text.append(Text("(binary body, base64 not shown; y copies the event)\n", style="dim"))
        return
    text = body.get("text")
    if not isinstance(text, str):
        return
    if "event-stream" in content_type or text.startswith(("data:", "event:")):
        _render_sse(doc, text)
        return
    shown = _pretty_json_text(text)
    if len(shown) > BODY_DISPLAY_LIMIT:
        doc.block(shown[:BODY_DISPLAY_LIMIT])
        more = len(shown) - BODY_DISPLAY_LIMIT
        doc.text.append(Text(f"… {more} more characters not shown (y copies the event)\n", style="dim"))
    else:
        doc.block(shown)


def _render_sse(doc: _Doc, text: str) -> None:
    events = parse_sse(text)
    joined = stream_text(events)
    doc.text.append(Text(f"SSE stream: {len(events)} event(s)\n", style="bold"))
    if joined:
        doc.text.append(Text("reassembled text:\n", style="bold"))
        doc.block(joined[:BODY_DISPLAY_LIMIT], "italic")
    for ev in events[:500]:
        doc.text.append(safe_text(ev.event, "cyan"))
        doc.text.append(" ")
        doc.text.append(safe_text(ev.data[:2000]))
        doc.text.append("\n")
    if len(events) > 500:
        doc.text.append(Text(f"… {len(events) - 500} more events\n", style="dim"))


def _render_stream_timing(doc: _Doc, stream: dict[str, Any]) -> None:
    chunks = stream.get("chunks") if isinstance(stream.get("chunks"), list) else []
    doc.heading("stream timing")
    first = chunks[0][0] if chunks and isinstance(chunks[0], list) else None
    last = chunks[-1][0] if chunks and isinstance(chunks[-1], list) else None
    doc.field("chunks", f"{stream.get('chunk_count')} (first at {first} ms, last at {last} ms)")


def _pretty_json_text(text: str) -> str:
    stripped = text.lstrip()
    if not stripped.startswith(("{", "[")):
        return text
    try:
        return _pretty(orjson.loads(text))
    except orjson.JSONDecodeError:
        return text


def _pretty(value: object) -> str:
    # orjson escapes control characters inside strings (\u001b), so they stay visible as text.
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _dash(value: object) -> str:
    return DASH if value is None else printable(value)


def event_json(event: dict[str, Any]) -> str:
    return _pretty(event)
