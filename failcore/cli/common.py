"""What every command shares: the consoles, JSON output, the tape argument, run lookup, the run summary."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console

from failcore.paths import default_tape_dir
from failcore.textsafe import safe_text
from failcore.views import fmt

if TYPE_CHECKING:
    from failcore.tape.badlines import BadLines

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def tape_arg(value: str | None) -> Path:
    return Path(value).expanduser() if value else default_tape_dir()


def print_run_summary(s: dict[str, Any], stream: Console = console) -> None:
    from failcore.views.tables import run_summary_table

    stream.print(run_summary_table(s))
    for warning in s.get("warnings") or ():
        stream.print(safe_text(f"warning: {warning}", "yellow"), soft_wrap=True)


@contextlib.contextmanager
def reading(tape: Path) -> Iterator[Callable[[int, int], None] | None]:
    """A spinner on the terminal (stderr) while a whole tape is read: a big one takes seconds. Yields a
    `progress(done_bytes, total_bytes)` callback for readers that report how far they are (None off a
    terminal: nothing is written then)."""
    if not err_console.is_terminal:
        yield None
        return
    from failcore.tape.reader import list_segments

    size = sum(p.stat().st_size for p in list_segments(tape))
    label = f"reading {tape} ({fmt.size(size)})"
    with err_console.status(safe_text(f"{label}…")) as status:

        def progress(done: int, total: int) -> None:
            status.update(safe_text(f"{label}: {done * 100 // max(total, 1)}%…"))

        yield progress


# The exit status of a read-only command (list, show, tail) that met a line failcore did not write as it
# is: 1, as `failcore verify` exits for a BROKEN tape.
TAPE_NOT_INTACT = 1


def line_checker() -> BadLines:
    """Collects the broken lines a command reads (tape/badlines.py), warning on stderr, one line each, as
    it meets them."""
    from failcore.tape.badlines import BadLines

    def warn(segment: str, line: int, why: str) -> None:
        err_console.print(
            safe_text(f"failcore: warning: {segment} line {line}: {why}", "yellow"), soft_wrap=True
        )

    return BadLines(warn)


def tape_verdict(bad: BadLines, tape: Path) -> int:
    """0 when every line read was intact; else, after saying so on stderr, TAPE_NOT_INTACT."""
    if not len(bad):
        return 0
    more = f" ({bad.unwarned} not listed)" if bad.unwarned else ""
    err_console.print(
        safe_text(
            f"failcore: {len(bad)} line(s) of the tape {tape} are not as failcore wrote them{more}; what is "
            f"shown includes them as they are now. `failcore verify {tape}` checks the whole tape",
            "red",
        ),
        soft_wrap=True,
    )
    return TAPE_NOT_INTACT


class NoRun(Exception):
    """The run asked for cannot be shown; `code` is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def pick_run(tape: Path, run: str | None, last: bool) -> str:
    """The run named (in full, or by a unique prefix or suffix), or the last one. Raises NoRun: exit 1
    for a tape without runs, 2 for a name that matches no run or several."""
    from failcore.runs import UnknownRun, last_run_id, resolve_run

    if not tape.exists():
        raise NoRun(f"failcore: no tape at {tape}", 1)
    if last or not run:
        found = last_run_id(tape)
        if found is None:
            raise NoRun(f"failcore: no runs in {tape}", 1)
        return found
    try:
        return resolve_run(tape, run)
    except UnknownRun as e:
        raise NoRun(f"failcore: {e}", 2) from None
