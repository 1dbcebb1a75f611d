"""`failcore view`: browse a tape interactively (runs → events → one event)."""

from __future__ import annotations

import argparse
import time

from failcore.cli.common import err_console, tape_arg
from failcore.textsafe import safe_text


def cmd_view(args: argparse.Namespace) -> int:
    from failcore.tape.reader import list_segments
    from failcore.tui.app import run_viewer

    tape = tape_arg(args.tape)
    if not tape.exists() and args.follow:
        # Started before the proxy (the usual order in two terminals): wait for the tape to appear.
        err_console.print(safe_text(f"failcore: waiting for a tape at {tape} (Ctrl-C to stop)"))
        try:
            while not list_segments(tape):
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 130
    if not tape.exists():
        err_console.print(safe_text(f"failcore: no tape at {tape} (with -f, view waits for it)"))
        return 1
    return run_viewer(tape, follow=args.follow, cache=not args.no_cache)
