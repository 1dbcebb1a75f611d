"""`failcore tail`: the last events of a tape; -f follows a running proxy."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

import orjson

from failcore.cli.common import console, err_console, line_checker, tape_arg, tape_verdict
from failcore.textsafe import safe_text


def cmd_tail(args: argparse.Namespace) -> int:
    from collections import deque

    from failcore.tape import follow, iter_lines
    from failcore.tape.badlines import parse_checked
    from failcore.views.tables import event_line

    tape = tape_arg(args.tape)
    if not tape.exists():
        err_console.print(safe_text(f"failcore: no tape at {tape}"))
        return 1

    def emit(ev: dict[str, Any]) -> None:
        if args.json:
            sys.stdout.write(orjson.dumps(ev).decode() + "\n")
            sys.stdout.flush()
            return
        console.print(event_line(ev))

    # Every line shown is checked (tape/badlines.py): a broken one is warned about where it is met (and
    # shown if it parses), -f goes on after it, and the exit status says the tape is not intact. Only
    # the last lines are parsed and checked: the ones before are not shown.
    bad = line_checker()
    for line in deque((line for line in iter_lines(tape) if line.complete), maxlen=args.lines):
        ev, why = parse_checked(line.raw)
        if why is not None:
            bad.add(line.segment, line.line, why)
        if ev is not None:
            emit(ev)
    if args.follow:
        with contextlib.suppress(KeyboardInterrupt):
            for ev in follow(tape, from_end=True, on_bad_line=bad, check_lines=True):
                emit(ev)
    return tape_verdict(bad, tape)
