"""`failcore diff`: where run B first departs from run A (exit 0 same shape, 1 diverged or a line read
is not as failcore wrote it)."""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from failcore.cli.common import console, err_console, line_checker, print_json, tape_arg, tape_verdict
from failcore.textsafe import safe_text


def cmd_diff(args: argparse.Namespace) -> int:
    from failcore.diff import diff_runs

    tape = tape_arg(args.tape)
    bad = line_checker()
    try:
        result = diff_runs(tape, args.run_a, args.run_b, args.ignore or [], bad)
    except ValueError as e:
        err_console.print(safe_text(f"failcore diff: {e}", "red"))
        return 2
    data = result.to_dict()
    if args.json:
        print_json(data)
    else:
        _print_diff(data)
    # A tape that is not as failcore wrote it says nothing about whether the runs are the same.
    intact = tape_verdict(bad, tape) == 0
    return 1 if result.diverged or not intact else 0


def _print_diff(d: dict[str, Any]) -> None:
    say = console.print
    counts = d["requests"]
    say(safe_text(f"diff {d['run_a']} → {d['run_b']}: {counts['a']} vs {counts['b']} requests"))
    if not d["diverged"]:
        say(safe_text("same shape: no divergence", "green"))
    first = d["first_divergence"]
    if first is not None and first["kind"] == "request":
        a, b = first["a"], first["b"]
        say(safe_text(f"first divergence: #{a['seq']} → #{b['seq']} {b['summary']}", "yellow"))
        say(safe_text(f"  {first['where']} {first.get('pointer') or ''}".rstrip()))
        for side, label in (("recorded", "A"), ("live", "B")):
            absent = first.get(f"{side}_absent")
            value = "(absent)" if absent else orjson.dumps(first.get(side)).decode()
            say(safe_text(f"  {label}: {value}"))
    elif first is not None:
        side = "a" if first["kind"] == "only_in_a" else "b"
        say(safe_text(f"first divergence: only in {side.upper()}: {first[side]['summary']}", "yellow"))
    for side in ("a", "b"):
        if hosts := d[f"hosts_only_in_{side}"]:
            say(safe_text(f"hosts only in {side.upper()}: {', '.join(hosts)}"))
    for change in d["decision_changes"]:
        say(safe_text(f"decision {change['b']['summary']}: {change['from']} → {change['to']}", "yellow"))
    for change in d["status_changes"]:
        say(safe_text(f"status {change['b']['summary']}: {change['from']} → {change['to']}"))
    _print_tool_divergence(d)
    delta = d["totals"]["delta"]
    if any(delta.values()):
        usd = f", ${delta['usd']:+.6f}" if delta["usd"] is not None else ""
        tokens = f"{delta['input_tokens'] or 0:+d} in / {delta['output_tokens'] or 0:+d} out"
        say(safe_text(f"tokens {tokens}{usd}"))


def _call_text(call: dict[str, Any]) -> str:
    """`#4 write_file(path="a.txt", …) args 1f2e… → BLOCKED [BLOCK fs.write_outside_roots]`."""
    verdict = " ".join(str(v) for v in (call.get("decision"), call.get("rule")) if v)
    text = f"#{call['seq']} {call['tool']}({call['args']}) args {call['args_hash']} → {call['outcome']}"
    return text + (f" [{verdict}]" if verdict else "")


def _print_tool_divergence(d: dict[str, Any]) -> None:
    """The first divergent guarded tool call (by tool name, args hash and outcome), when runs made any."""
    say = console.print
    counts = d.get("tool_calls") or {}
    if not counts.get("a") and not counts.get("b"):
        return
    first = d.get("first_tool_divergence")
    if first is None:
        say(safe_text(f"tool calls: {counts['a']} vs {counts['b']}, the same calls"))
        return
    say(safe_text(f"tool calls: {counts['a']} vs {counts['b']}"))
    if first["kind"] != "tool":
        side = "a" if first["kind"] == "only_in_a" else "b"
        only = _call_text(first[side])
        say(safe_text(f"first divergent tool call: only in {side.upper()}: {only}", "yellow"))
        return
    a, b = first["a"], first["b"]
    differs = ", ".join(first["differs"])
    say(safe_text(f"first divergent tool call: #{a['seq']} → #{b['seq']} {b['tool']} ({differs})", "yellow"))
    say(safe_text(f"  A: {_call_text(a)}"))
    say(safe_text(f"  B: {_call_text(b)}"))
    if "pointer" in first:
        say(safe_text(f"  args differ at {first['pointer'] or '/'}: {first['recorded']} → {first['live']}"))
