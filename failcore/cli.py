"""The `failcore` command: proxy, run, ca, list, show, tail, verify, report, diff, view, policy check,
sample."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from rich import box
from rich.console import Console
from rich.table import Table

from failcore import __version__
from failcore.paths import default_tape_dir, failcore_home
from failcore.textsafe import printable, safe_text

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

DECISION_STYLE = {"ALLOW": "green", "WARN": "yellow", "BLOCK": "bold red"}
OUTCOME_STYLE = {"ok": "green", "BLOCKED": "bold red", "FAIL": "red"}


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _tokens(inp: int, out: int) -> str:
    return f"{inp:,}/{out:,}"


def _usd(value: float, unpriced: int = 0) -> str:
    # A total with unpriced calls in it is a lower bound, and must say so.
    shown = f"${value:.6f}" if 0 < value < 0.01 else f"${value:.4f}"
    return shown + ("+?" if unpriced else "")


def _tape_arg(value: str | None) -> Path:
    return Path(value).expanduser() if value else default_tape_dir()


# ---------------------------------------------------------------- proxy / run


def _replay_options(args: argparse.Namespace) -> dict[str, Any]:
    """--replay/--on-miss/--pace/--override/--ignore as the Replayer's mitmproxy options."""
    if not getattr(args, "replay", None):
        return {}
    return {
        "failcore_replay": args.replay,
        "failcore_replay_on_miss": args.on_miss,
        "failcore_replay_pace": args.pace,
        "failcore_replay_override": args.override or [],
        "failcore_replay_ignore": args.ignore or [],
    }


def _replay_summary(tape: Path, run: str) -> dict[str, Any]:
    from failcore.replay import replay_savings
    from failcore.runs import run_events

    return replay_savings(run_events(tape, run))


def _print_replay_summary(saved: dict[str, Any], stream: Console) -> None:
    tokens = (
        f", {saved['input_tokens'] or 0} input + {saved['output_tokens'] or 0} output tokens"
        if saved["input_tokens"] is not None or saved["output_tokens"] is not None
        else ""
    )
    usd = f", {_usd(saved['usd'])}" if saved["usd"] is not None else ""
    stream.print(safe_text(f"replay: the tape answered {saved['calls']} calls{tokens}{usd}"))


def _proxy_settings(args: argparse.Namespace, *, port: int):  # type: ignore[no-untyped-def]
    from failcore.runner import ProxySettings

    return ProxySettings(
        listen_host=args.listen_host,
        listen_port=port,
        modes=args.mode or ["regular"],
        policy=args.policy,
        tape=args.tape,
        policy_mode="enforce" if args.enforce else "observe" if args.observe else None,
        run_id=args.run_id,
        confdir=Path(args.confdir).expanduser() if args.confdir else None,
        sets=args.set or [],
        quiet=not getattr(args, "verbose", False),
        extra=_replay_options(args),
    )


def _env_lines(env: dict[str, str]) -> list[str]:
    return [f"export {k}={v}" for k, v in env.items() if k.isupper()]


async def _serve(args: argparse.Namespace) -> int:
    from failcore.runner import EmbeddedProxy, ProxyStartError

    proxy = EmbeddedProxy(_proxy_settings(args, port=args.port))
    try:
        await proxy.start()
    except ProxyStartError as e:
        err_console.print(safe_text(f"failcore: {e}", "red", keep_newlines=True), soft_wrap=True)
        return 2
    loop = asyncio.get_running_loop()
    signals = 0
    stopping: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        # The first Ctrl-C lets open exchanges finish (2 s at most) so they reach the tape whole;
        # a second one stops at once and records them as killed.
        nonlocal signals
        signals += 1
        stopping.append(loop.create_task(proxy.stop(drain=2.0 if signals == 1 else 0.0)))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    assert proxy.ca is not None
    policy = proxy.session.policy
    info = {
        "address": proxy.url,
        "run": proxy.session.run_id,
        "tape": str(proxy.tape_dir),
        "policy": policy.source if policy else None,
        "mode": policy.mode if policy else None,
        "ca_cert": str(proxy.ca.cert_path),
        "ca_sha256": proxy.ca.sha256,
        "env": proxy.ca.env(proxy.url) if "regular" in (args.mode or ["regular"]) else {},
    }
    if args.json:
        _print_json(info)
    else:
        console.print(
            f"[bold]failcore {__version__}[/] listening on [cyan]{proxy.url}[/] "
            f"({', '.join(args.mode or ['regular'])})"
        )
        console.print(safe_text(f"run {info['run']}  tape {info['tape']}"))
        console.print(safe_text(f"policy {info['policy']} (mode {info['mode']})"))
        console.print(safe_text(f"CA {info['ca_cert']}  sha256 {info['ca_sha256']}"))
        if info["env"]:
            console.print("Point a client at it:")
            for line in _env_lines(info["env"]):
                console.print(safe_text("  " + line))
        console.print("Ctrl-C stops (after open exchanges finish, 2 s at most; twice: at once).")
    await proxy.wait()
    if args.replay and not args.json:
        _print_replay_summary(_replay_summary(proxy.tape_dir, proxy.session.run_id), err_console)
    return 0


async def _run_command(args: argparse.Namespace) -> int:
    from failcore.runner import EmbeddedProxy, ProxyStartError
    from failcore.runs import summarize_tape

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        err_console.print("failcore run: give a command after --, e.g. failcore run -- python agent.py")
        return 2
    proxy = EmbeddedProxy(_proxy_settings(args, port=0))
    try:
        await proxy.start()
    except ProxyStartError as e:
        err_console.print(safe_text(f"failcore: {e}", "red", keep_newlines=True), soft_wrap=True)
        return 2
    assert proxy.ca is not None
    env = dict(os.environ)
    env.update(proxy.ca.env(proxy.url, args.no_proxy))
    env["FAILCORE_RUN_ID"] = proxy.session.run_id
    try:
        child = await asyncio.create_subprocess_exec(*command, env=env)
    except OSError as e:
        await proxy.stop()
        err_console.print(safe_text(f"failcore run: cannot start {command[0]}: {e}", "red"))
        return 127
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda s=sig: child.returncode is None and child.send_signal(s))
    code = await child.wait()
    await proxy.stop()
    summaries = summarize_tape(proxy.tape_dir, run=proxy.session.run_id)
    summary = summaries[0].to_dict() if summaries else {"run": proxy.session.run_id, "requests": 0}
    summary["exit_code"] = code
    summary["tape"] = str(proxy.tape_dir)
    if args.replay:
        summary["replay_saved"] = _replay_summary(proxy.tape_dir, proxy.session.run_id)
    if args.json:
        _print_json(summary)
    else:
        _print_run_summary(summary, stream=err_console)
    return code if code >= 0 else 128 - code


def _print_run_summary(s: dict[str, Any], stream: Console = console) -> None:
    table = Table(title=printable(f"failcore run {s['run']}"), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("requests", str(s.get("requests", 0)))
    table.add_row("blocked", safe_text(s.get("blocked", 0), "red" if s.get("blocked") else ""))
    table.add_row(
        "warned",
        safe_text(f"{s.get('warned', 0)} ({s.get('would_block', 0)} would be blocked in enforce mode)"),
    )
    failed = s.get("failed", 0)
    reasons = ", ".join(f"{k} {v}" for k, v in (s.get("fail_reasons") or {}).items())
    table.add_row(
        "failed", safe_text(f"{failed}" + (f" ({reasons})" if reasons else ""), "red" if failed else "")
    )
    table.add_row("bytes", f"{_size(s.get('bytes_out', 0))} out, {_size(s.get('bytes_in', 0))} in")
    if s.get("llm_calls"):
        unpriced = s.get("unpriced_calls", 0)
        tokens = _tokens(s.get("input_tokens", 0), s.get("output_tokens", 0))
        cost = _usd(s.get("cost_usd", 0.0), unpriced)
        note = f" ({unpriced} without a known cost)" if unpriced else ""
        table.add_row("LLM calls", f"{s['llm_calls']}: {tokens} tokens in/out, {cost}{note}")
    hosts = s.get("hosts") or {}
    table.add_row("hosts", safe_text(", ".join(f"{h} ×{n}" for h, n in sorted(hosts.items())) or "-"))
    if s.get("internal_errors"):
        table.add_row("internal errors", safe_text(s["internal_errors"], "red"))
    if s.get("dropped"):
        table.add_row("dropped events", safe_text(s["dropped"], "red"))
    if "exit_code" in s:
        table.add_row("exit code", str(s["exit_code"]))
    if s.get("replay_saved"):
        saved = s["replay_saved"]
        tokens = f"{saved['input_tokens'] or 0} in / {saved['output_tokens'] or 0} out tokens"
        usd = f", {_usd(saved['usd'])}" if saved["usd"] is not None else ""
        table.add_row("replay saved", safe_text(f"{saved['calls']} calls, {tokens}{usd}"))
    if s.get("tape"):
        table.add_row("tape", safe_text(s["tape"]))
    stream.print(table)


# ---------------------------------------------------------------- ca


def cmd_ca(args: argparse.Namespace) -> int:
    from failcore.ca import ensure_ca

    info = ensure_ca(Path(args.confdir).expanduser() if args.confdir else None)
    proxy_url = f"http://127.0.0.1:{args.port}"
    data = {
        "confdir": str(info.confdir),
        "cert": str(info.cert_path),
        "bundle": str(info.bundle_path),
        "sha256": info.sha256,
        "env": info.env(proxy_url),
    }
    if args.json:
        _print_json(data)
        return 0
    console.print(safe_text(f"CA certificate  {info.cert_path}"))
    console.print(safe_text(f"SHA-256         {info.sha256}"))
    console.print(safe_text(f"trust bundle    {info.bundle_path} (certifi + failcore CA)"))
    console.print(f"Environment for a client of a proxy on {proxy_url}:")
    for line in _env_lines(data["env"]):
        console.print(safe_text("  " + line))
    return 0


# ---------------------------------------------------------------- list / show / tail


def cmd_list(args: argparse.Namespace) -> int:
    from failcore.runs import summarize_tape

    tape = _tape_arg(args.tape)
    if not tape.exists():
        err_console.print(safe_text(f"failcore: no tape at {tape}"))
        return 1
    runs = summarize_tape(tape)
    if args.json:
        _print_json([r.to_dict() for r in runs])
        return 0
    table = Table(title=printable(f"runs in {tape}"), title_justify="left")
    # The id is what `failcore show RUN` takes: never shorten it, the other columns give way.
    run_width = max((len(printable(r.run)) for r in runs), default=3)
    numeric = ("requests", "blocked", "warned", "failed", "tokens", "cost")
    for col in ("started", "run", "requests", "blocked", "warned", "failed", "tokens", "cost", "hosts"):
        table.add_column(
            col,
            justify="right" if col in numeric else "left",
            no_wrap=col == "run",
            min_width=run_width if col == "run" else None,
        )
    for r in runs:
        table.add_row(
            _when(r.started),
            safe_text(r.run),
            str(r.requests),
            safe_text(r.blocked, "red" if r.blocked else ""),
            safe_text(r.warned, "yellow" if r.warned else ""),
            safe_text(r.failed, "red" if r.failed else ""),
            _tokens(r.input_tokens, r.output_tokens) if r.llm_calls else "-",
            _usd(r.cost_usd, r.unpriced_calls) if r.llm_calls else "-",
            safe_text(", ".join(sorted(h.rsplit(":", 1)[0] for h in r.hosts))[:60]),
        )
    console.print(table)
    return 0


def _resolve_run(tape: Path, run: str | None, last: bool) -> str | None:
    from failcore.runs import last_run_id

    if last or not run:
        return last_run_id(tape)
    return run


def _event_row(ev: dict[str, Any], *, with_time: bool = True) -> list[Any]:
    target = ev.get("target") or {}
    decision = ev.get("decision") or ""
    outcome = ev.get("outcome") or ""
    kind = ev.get("kind") or ""
    summary = ev.get("summary") or (ev.get("detail") or {}).get("action") or kind
    if kind not in ("network", "websocket"):
        summary = f"[{kind}] {summary if summary != kind else ''}".rstrip()
    shown_decision = decision + ("*" if ev.get("would_block") and decision == "WARN" else "")
    # A failure shows its reason: "FAIL" alone says nothing a person can act on.
    shown_outcome = ev.get("fail_reason") or outcome if outcome == "FAIL" else outcome
    row = [
        str(ev.get("seq")),
        _when(ev.get("ts_end") if kind == "run_end" else ev.get("ts_start") or ev.get("ts")).split(" ")[-1],
        safe_text(shown_decision, DECISION_STYLE.get(decision, "")),
        safe_text(shown_outcome, OUTCOME_STYLE.get(outcome, "red" if kind == "internal_error" else "")),
        safe_text(ev.get("status") if ev.get("status") is not None else "-"),
        safe_text(target.get("host", "")),
        safe_text(summary),
        f"{ev['latency_ms']:.0f}" if isinstance(ev.get("latency_ms"), int | float) else "-",
    ]
    if not with_time:
        del row[1]
    return row


def _events_table(title: str, *, with_time: bool = True) -> Table:
    table = Table(title=printable(title), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("seq", no_wrap=True, justify="right", min_width=3)
    if with_time:
        table.add_column("time", no_wrap=True, min_width=8)
    table.add_column("decision", no_wrap=True, min_width=8)
    table.add_column("outcome", no_wrap=True, min_width=15)
    table.add_column("status", no_wrap=True, min_width=6)
    table.add_column("host", no_wrap=True, overflow="ellipsis", min_width=9, max_width=24)
    table.add_column("summary", no_wrap=True, overflow="ellipsis", ratio=1, min_width=20)
    table.add_column("ms", no_wrap=True, justify="right", min_width=2)
    return table


def _wide(stream: Console = console) -> bool:
    return stream.width >= 110


def cmd_show(args: argparse.Namespace) -> int:
    from failcore.runs import run_events

    tape = _tape_arg(args.tape)
    run = _resolve_run(tape, args.run, args.last)
    if run is None:
        err_console.print(safe_text(f"failcore: no runs in {tape}"))
        return 1
    if args.event is not None:
        for ev in run_events(tape, run):
            if ev.get("seq") == args.event or ev.get("flow") == str(args.event):
                if args.json:
                    _print_json(ev)
                else:
                    console.print(
                        safe_text(orjson.dumps(ev, option=orjson.OPT_INDENT_2).decode(), keep_newlines=True)
                    )
                return 0
        err_console.print(safe_text(f"failcore: no event {args.event} in run {run}"))
        return 1
    events = (ev for ev in run_events(tape, run) if ev.get("kind") not in ("checkpoint",))
    if args.json:
        _print_json(list(events))
        return 0
    from failcore.runs import RunSummary

    wide = _wide()
    table = _events_table(f"run {run}", with_time=wide)
    totals = RunSummary(run=run)
    for ev in events:
        totals.add(ev)
        table.add_row(*_event_row(ev, with_time=wide))
    console.print(table)
    if totals.llm_calls:
        console.print(
            safe_text(
                f"{totals.llm_calls} LLM call(s): {_tokens(totals.input_tokens, totals.output_tokens)} "
                f"tokens in/out, {_usd(totals.cost_usd, totals.unpriced_calls)}"
            )
        )
    console.print("* = would be blocked in enforce mode. One event in full: failcore show RUN --event SEQ")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from collections import deque

    from failcore.tape import follow, iter_events

    tape = _tape_arg(args.tape)
    if not tape.exists():
        err_console.print(safe_text(f"failcore: no tape at {tape}"))
        return 1

    def emit(ev: dict[str, Any]) -> None:
        if args.json:
            sys.stdout.write(orjson.dumps(ev).decode() + "\n")
            sys.stdout.flush()
            return
        row = _event_row(ev)
        line = safe_text(" ".join(printable(c) if isinstance(c, str) else c.plain for c in row))
        console.print(line)

    for ev in deque(iter_events(tape, on_bad_line=lambda line, why: None), maxlen=args.lines):
        emit(ev)
    if args.follow:
        with contextlib.suppress(KeyboardInterrupt):
            for ev in follow(tape, from_end=True):
                emit(ev)
    return 0


# ---------------------------------------------------------------- verify / policy


def cmd_verify(args: argparse.Namespace) -> int:
    from failcore.tape.keys import load_public_key
    from failcore.tape.verify import verify_tape

    tape = _tape_arg(args.tape)
    if not tape.exists():
        err_console.print(safe_text(f"failcore: no tape at {tape}"))
        return 1
    key = None
    if args.key:
        key = load_public_key(Path(args.key))
    else:
        local = failcore_home() / "failcore-signing.pub"
        if local.exists() and not args.tape_key:
            key = load_public_key(local)
    report = verify_tape(tape, public_key=key)
    data = report.to_dict()
    if args.json:
        _print_json(data)
    else:
        _print_verify(report, tape)
    if not report.ok:
        return 1
    return 3 if report.truncated else 0


def _print_verify(report: Any, tape: Path) -> None:
    head = f"{report.lines} lines in {report.segments} segment(s), {report.checkpoints} signed checkpoint(s)"
    if report.ok:
        console.print(safe_text(f"OK  {tape}: chain intact, {head}", "green"))
    else:
        b = report.first_break
        console.print(safe_text(f"BROKEN  {tape}: {head}", "bold red"))
        if b is not None:
            console.print(
                safe_text(f"  first break: {b.segment} line {b.line} ({b.kind}): {b.message}", "red"),
                soft_wrap=True,
            )
    for segment, line in report.truncated:
        console.print(
            safe_text(
                f"  truncated: {segment} line {line} is an incomplete final line (the writer was killed "
                "mid-write); everything before it verifies",
                "yellow",
            )
        )
    if report.unsigned_tail:
        console.print(
            safe_text(
                f"  {report.unsigned_tail} line(s) after the last checkpoint are chained but not yet signed"
            )
        )
    source = getattr(report, "key_source", None)
    if source == "tape":
        console.print(
            safe_text(
                "  signatures checked with the public key stored in the tape itself; pass --key to pin one"
            )
        )


def cmd_policy_check(args: argparse.Namespace) -> int:
    from failcore.policy import check_policy
    from failcore.shipped import resolve_policy

    results = {str(p): [str(x) for x in check_policy(resolve_policy(p))] for p in args.files}
    if args.json:
        _print_json({"ok": not any(results.values()), "files": results})
    else:
        for path, problems in results.items():
            if problems:
                for problem in problems:
                    # One problem per line even when piped (80 columns): `file:line:col: message` is grepped.
                    console.print(safe_text(problem, "red"), soft_wrap=True)
            else:
                console.print(safe_text(f"{path}: OK", "green"), soft_wrap=True)
    return 1 if any(results.values()) else 0


def cmd_sample(args: argparse.Namespace) -> int:
    from failcore.sample import run_sample

    return asyncio.run(
        run_sample(json_output=args.json, tape=Path(args.tape).expanduser() if args.tape else None)
    )


def cmd_report(args: argparse.Namespace) -> int:
    from failcore.report import (
        REPORT_FILE_MODE,
        REPORT_WITH_BODIES_MODE,
        ReportError,
        collect_report,
        render_report,
        write_report,
    )
    from failcore.tape.keys import load_public_key

    tape = _tape_arg(args.tape)
    if not tape.is_dir():
        err_console.print(safe_text(f"failcore: no tape at {tape}"))
        return 1
    run = _resolve_run(tape, args.run, args.last)
    if run is None:
        err_console.print(safe_text(f"failcore: no runs in {tape}"))
        return 1
    key = None
    if args.key:
        key = load_public_key(Path(args.key))
    elif not args.tape_key and (failcore_home() / "failcore-signing.pub").exists():
        key = load_public_key(failcore_home() / "failcore-signing.pub")

    def progress(what: str) -> None:
        status.update(safe_text(what))

    try:
        with err_console.status(safe_text(f"reading run {run}"), spinner="dots") as status:
            report = collect_report(
                tape,
                run,
                public_key=key,
                max_events=args.max_events,
                bodies=args.bodies,
                progress=progress,
            )
            status.update("writing the report")
            html_text = render_report(report)
    except ReportError as e:
        err_console.print(safe_text(f"failcore: {e}"))
        return 1
    mode = REPORT_WITH_BODIES_MODE if args.bodies else REPORT_FILE_MODE
    out = write_report(html_text, Path(args.output).expanduser(), mode=mode)
    chain = "OK" if report.verification.ok else "BROKEN"
    left_out = sum(report.omitted.values())
    if args.json:
        _print_json(
            {
                "run": run,
                "output": str(out),
                "events": len(report.timeline),
                "events_read": report.events_read,
                "left_out": report.omitted,
                "bodies": args.bodies,
                "chain": chain,
            }
        )
    else:
        console.print(safe_text(f"report for run {run} written to {out} (tape chain {chain})"))
        if left_out:
            console.print(
                safe_text(
                    f"  bounded by --max-events {args.max_events}: {left_out:,} row(s) left out "
                    f"({', '.join(f'{k} {v:,}' for k, v in report.omitted.items())}); "
                    "counts cover the whole run"
                )
            )
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from failcore.tui.app import run_viewer

    tape = _tape_arg(args.tape)
    if not tape.exists():
        err_console.print(safe_text(f"failcore: no tape at {tape}"))
        return 1
    return run_viewer(tape, follow=args.follow, cache=not args.no_cache)


def cmd_diff(args: argparse.Namespace) -> int:
    from failcore.diff import diff_runs

    tape = _tape_arg(args.tape)
    try:
        result = diff_runs(tape, args.run_a, args.run_b, args.ignore or [])
    except ValueError as e:
        err_console.print(safe_text(f"failcore diff: {e}", "red"))
        return 2
    data = result.to_dict()
    if args.json:
        _print_json(data)
    else:
        _print_diff(data)
    return 1 if result.diverged else 0


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
    delta = d["totals"]["delta"]
    if any(delta.values()):
        usd = f", ${delta['usd']:+.6f}" if delta["usd"] is not None else ""
        tokens = f"{delta['input_tokens'] or 0:+d} in / {delta['output_tokens'] or 0:+d} out"
        say(safe_text(f"tokens {tokens}{usd}"))


def cmd_policy_list(args: argparse.Namespace) -> int:
    from failcore.shipped import policies_dir, shipped_policy_names

    names = shipped_policy_names()
    if args.json:
        _print_json({"dir": str(policies_dir()), "policies": names})
        return 0
    console.print(safe_text(f"shipped policies (in {policies_dir()}); use --policy NAME:"), soft_wrap=True)
    for name in names:
        console.print(safe_text(f"  {name}"), soft_wrap=True)
    return 0


def cmd_addon_path(args: argparse.Namespace) -> int:
    from failcore.shipped import addon_path

    # Plain print: the output is meant for $(...), with no styling or wrapping.
    print(addon_path())
    return 0


# ---------------------------------------------------------------- parser


def _add_proxy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policy",
        help="policy YAML path, or a shipped policy's name (strict, examples/dlp, …: see `failcore policy "
        "list`); default: default, observe mode",
    )
    p.add_argument("--tape", help=f"tape directory (default: {default_tape_dir()})")
    p.add_argument("--listen-host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--mode",
        action="append",
        help="mitmproxy mode: regular (default), transparent, local[:PROCESS], wireguard, … (repeatable)",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--enforce", action="store_true", help="override the policy: block what it blocks")
    group.add_argument("--observe", action="store_true", help="override the policy: only record would-blocks")
    p.add_argument("--run-id", help="run id for the events (default: generated)")
    p.add_argument("--confdir", help=f"where the CA and signing key live (default: {failcore_home()})")
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="any mitmproxy or failcore option, as with mitmdump (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-v", "--verbose", action="store_true", help="show mitmproxy's info messages")
    p.add_argument(
        "--replay", metavar="TAPE[:RUN]", help="answer matching requests from a recorded run (default: last)"
    )
    p.add_argument(
        "--on-miss", choices=("live", "fail"), default="live", help="unmatched: go live or fail (599)"
    )
    p.add_argument(
        "--pace", choices=("fast", "recorded"), default="fast", help="streamed answers: fast or as recorded"
    )
    p.add_argument(
        "--override", action="append", metavar="N=FILE", help="answer the N-th request with FILE (repeatable)"
    )
    p.add_argument(
        "--ignore",
        action="append",
        metavar="POINTER",
        help="JSON pointer to leave out when matching request bodies ('*' = any key; repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="failcore", description=__doc__)
    parser.add_argument("--version", action="version", version=f"failcore {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("proxy", help="run the recording proxy")
    _add_proxy_args(p)
    p.add_argument("--port", type=int, default=8080, help="listen port (default 8080; 0 picks a free one)")

    p = sub.add_parser("run", help="run a command with all its HTTP(S) through a fresh failcore proxy")
    _add_proxy_args(p)
    p.add_argument("--no-proxy", default="", help="NO_PROXY value for the command (default: capture all)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS…")

    p = sub.add_parser("ca", help="show (and on first use create) failcore's CA")
    p.add_argument("--confdir")
    p.add_argument("--port", type=int, default=8080, help="proxy port to use in the printed environment")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("list", help="runs on a tape")
    p.add_argument("--tape")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("show", help="events of a run (or one event in full)")
    p.add_argument("run", nargs="?", help="run id (default: the last run)")
    p.add_argument("--last", action="store_true", help="the most recent run")
    p.add_argument("--event", type=int, help="show this event (seq) in full")
    p.add_argument("--tape")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("tail", help="last events of a tape; -f follows a running proxy")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--lines", type=int, default=20)
    p.add_argument("--tape")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "verify", help="check a tape's hash chain and signatures (exit 0 intact, 1 broken, 3 truncated)"
    )
    p.add_argument("tape", nargs="?")
    p.add_argument("--key", help="public key to check signatures with (default: this machine's)")
    p.add_argument("--tape-key", action="store_true", help="trust the public key stored in the tape")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("report", help="one self-contained HTML report of a run, safe to share")
    p.add_argument("run", nargs="?", help="run id (default: the last run)")
    p.add_argument("--last", action="store_true", help="the most recent run")
    p.add_argument("--tape")
    p.add_argument("-o", "--output", default="failcore-report.html", help="HTML file to write")
    p.add_argument("--key", help="public key to check the tape's signatures with (default: this machine's)")
    p.add_argument("--tape-key", action="store_true", help="trust the public key stored in the tape")
    p.add_argument(
        "--max-events",
        type=int,
        default=5000,
        help="most rows in any list of the report: timeline, waterfall, blocked, DLP hits, LLM calls… "
        "(default 5000; counts always cover the whole run and the page says what was left out)",
    )
    p.add_argument(
        "--bodies",
        action="store_true",
        help="include request/response bodies as recorded (DLP-masked) and LLM conversations; "
        "the file is then written 0600",
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("diff", help="where run B first departs from run A (exit 0 same shape, 1 diverged)")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--tape")
    p.add_argument("--ignore", action="append", metavar="POINTER", help="JSON pointer to ignore (repeatable)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("policy", help="policy tools")
    psub = p.add_subparsers(dest="policy_cmd", required=True)
    pc = psub.add_parser("check", help="validate policy files (errors name file:line:column)")
    pc.add_argument("files", nargs="+", help="policy files, or shipped policies' names")
    pc.add_argument("--json", action="store_true")
    pl = psub.add_parser("list", help="the policies shipped with failcore, by the name --policy accepts")
    pl.add_argument("--json", action="store_true")

    sub.add_parser(
        "addon-path",
        help="print the path of failcore's mitmproxy addon script: mitmdump -s \"$(failcore addon-path)\"",
    )

    p = sub.add_parser("view", help="browse a tape interactively (runs → events → one event)")
    p.add_argument("tape", nargs="?", help=f"tape directory (default: {default_tape_dir()})")
    p.add_argument("-f", "--follow", action="store_true", help="show new events as a proxy writes them")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the index cache")

    p = sub.add_parser("sample", help="offline demo: a local LLM stand-in, the proxy and an agent")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tape", help="where to write the demo's tape (default: ~/.failcore/sample-tape)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "ca": cmd_ca,
        "list": cmd_list,
        "show": cmd_show,
        "tail": cmd_tail,
        "verify": cmd_verify,
        "report": cmd_report,
        "sample": cmd_sample,
        "view": cmd_view,
        "diff": cmd_diff,
        "addon-path": cmd_addon_path,
    }
    if args.cmd == "proxy":
        return asyncio.run(_serve(args))
    if args.cmd == "run":
        return asyncio.run(_run_command(args))
    if args.cmd == "policy":
        return cmd_policy_list(args) if args.policy_cmd == "list" else cmd_policy_check(args)
    return handlers[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
