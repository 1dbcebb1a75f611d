"""`failcore report`: one self-contained HTML report of a run, safe to share."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from failcore.cli.common import NoRun, console, err_console, pick_run, print_json, tape_arg
from failcore.paths import failcore_home
from failcore.textsafe import safe_text


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

    tape = tape_arg(args.tape)
    if not tape.is_dir():
        err_console.print(safe_text(f"failcore: no tape at {tape}"))
        return 1
    try:
        run = pick_run(tape, args.run, args.last)
    except NoRun as e:
        err_console.print(safe_text(str(e)))
        return e.code
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
        print_json(
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
    return _broken_tape(report.verification, tape)


def _broken_tape(verification: Any, tape: Path) -> int:
    """0, or for a tape `failcore verify` calls BROKEN, 1 after saying so on stderr: the report shows
    what the tape holds now, which is not what failcore recorded (its page says so too)."""
    if verification.ok:
        return 0
    b = verification.first_break
    where = f" (first break: {b.segment} line {b.line}: {b.message})" if b is not None else ""
    err_console.print(
        safe_text(
            f"failcore: the tape {tape} is BROKEN{where}; the report shows what it holds now, not what was "
            f"recorded. `failcore verify {tape}` says more",
            "red",
        ),
        soft_wrap=True,
    )
    return 1
