"""`failcore list`: the runs on a tape, one row each (from the viewer's index cache: a warm call reads
only what was appended since)."""

from __future__ import annotations

import argparse

from failcore.cli.common import (
    console,
    err_console,
    line_checker,
    print_json,
    reading,
    tape_arg,
    tape_verdict,
)
from failcore.textsafe import safe_text


def cmd_list(args: argparse.Namespace) -> int:
    from failcore.tui.cache import prepare_cache_dir
    from failcore.tui.summaries import summarize_tape_cached

    tape = tape_arg(args.tape)
    if not tape.exists():
        err_console.print(safe_text(f"failcore: no tape at {tape}"))
        return 1
    bad = line_checker()
    with reading(tape) as progress:
        runs = summarize_tape_cached(tape, prepare_cache_dir(tape), progress, bad)
    if args.json:
        print_json([r.to_dict() for r in runs])
        return tape_verdict(bad, tape)
    from failcore.views.tables import runs_table

    table = runs_table(f"runs in {tape}", runs, console.width)
    console.print(table)
    return tape_verdict(bad, tape)
