"""The `failcore` command line: `main.py` builds the parser and dispatches; each command lives in its own
module (proxy, run, ca, listing = `list`, show, tail, verify, report, diff, view, policy, addon_path,
sample) and `common.py` holds what they share. `failcore.cli.main:entry` is the
console-script entry point (`main` and the exit)."""

from failcore.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
