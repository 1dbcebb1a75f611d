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

    from failcore.tape import follow, iter_events
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

    # Every line read is checked (tape/badlines.py): a broken one is warned about where it is met, and
    # -f goes on after it; the exit status says the tape is not intact.
    bad = line_checker()
    for ev in deque(iter_events(tape, on_bad_line=bad, check_lines=True), maxlen=args.lines):
        emit(ev)
    if args.follow:
        with contextlib.suppress(KeyboardInterrupt):
            for ev in follow(tape, from_end=True, on_bad_line=bad, check_lines=True):
                emit(ev)
    return tape_verdict(bad, tape)
