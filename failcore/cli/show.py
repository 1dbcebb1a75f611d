"""`failcore show`: the events of a run as a table, or one event in full."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

import orjson

from failcore.cli.common import (
    NoRun,
    console,
    err_console,
    line_checker,
    pick_run,
    print_json,
    reading,
    tape_arg,
    tape_verdict,
)
from failcore.textsafe import safe_text
from failcore.views.fmt import tokens as _tokens
from failcore.views.fmt import usd as _usd


def _find_event(events: Iterable[dict[str, Any]], wanted: str) -> dict[str, Any] | None:
    """An event by its seq (unique on a tape), its flow id, or a guarded tool call's id (its tool event;
    in full, or a unique prefix)."""
    if wanted.isdigit():
        return next((ev for ev in events if ev.get("seq") == int(wanted)), None)
    found = []
    for ev in events:
        if str(ev.get("flow") or "").startswith(wanted):
            found.append(("flow", ev.get("flow"), ev))
        elif ev.get("kind") == "tool" and str(ev.get("call") or "").startswith(wanted):
            found.append(("call", ev.get("call"), ev))
    return found[0][2] if len({(what, name) for what, name, _ in found}) == 1 else None


def _kinds(values: list[str] | None) -> frozenset[str]:
    """`--kind tool --kind fs` or `--kind tool,fs`: the event kinds to list (all when none given)."""
    return frozenset(k.strip() for v in values or () for k in v.split(",") if k.strip())


def cmd_show(args: argparse.Namespace) -> int:
    from failcore.runs import RunSummary, run_events
    from failcore.views.tables import events_table

    tape = tape_arg(args.tape)
    try:
        # An event is named by seq or flow, which a tape never repeats: without a run, look everywhere.
        everywhere = args.event is not None and not args.run and not args.last
        run = None if everywhere else pick_run(tape, args.run, args.last)
    except NoRun as e:
        err_console.print(safe_text(str(e)))
        return e.code
    bad = line_checker()
    if args.event is not None:
        ev = _find_event(run_events(tape, run, bad), args.event)
        if ev is None:
            where = f"run {run}" if run else str(tape)
            err_console.print(safe_text(f"failcore: no event {args.event} in {where}"))
            return 2
        if args.json:
            print_json(ev)
        else:
            text = orjson.dumps(ev, option=orjson.OPT_INDENT_2).decode()
            console.print(safe_text(text, keep_newlines=True))
        return tape_verdict(bad, tape)
    assert run is not None
    with reading(tape):
        events = [ev for ev in run_events(tape, run, bad) if ev.get("kind") not in ("checkpoint",)]
    kinds = _kinds(getattr(args, "kind", None))
    if kinds:
        events = [ev for ev in events if ev.get("kind") in kinds]
    if args.json:
        print_json(events)
        return tape_verdict(bad, tape)
    totals = RunSummary(run=run)
    for ev in events:
        totals.add(ev)
    console.print(events_table(f"run {run}", events, console.width))
    if totals.llm_calls:
        console.print(
            safe_text(
                f"{totals.llm_calls} LLM call(s): {_tokens(totals.input_tokens, totals.output_tokens)} "
                f"tokens in/out, {_usd(totals.cost_usd, totals.unpriced_calls)}"
            )
        )
    if totals.tool_calls or totals.effects:
        from failcore.views.runtime import effects_line, tool_calls_line

        summary = totals.to_dict()
        console.print(
            safe_text(
                f"tool calls: {tool_calls_line(summary)}; effects: {effects_line(summary)}",
                "red" if totals.tool_blocked or totals.effects_blocked else "",
            )
        )
    if totals.dlp_hits:
        console.print(
            safe_text(
                f"{totals.dlp_hits} DLP hit(s) in {totals.dlp_exchanges} exchange(s) "
                "(column dlp; red: a BLOCK rule matched)",
                "yellow",
            )
        )
    console.print(
        safe_text(
            f"* = a BLOCK rule matched but the exchange was let through (observe mode). "
            f"One event in full: failcore show --tape {tape} --event SEQ"
        )
    )
    return tape_verdict(bad, tape)
