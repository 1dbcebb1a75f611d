"""What a view does with a tape line it cannot vouch for: it names it by segment and line, once.

`list`, `show`, `tail` and `run` show what a tape holds without verifying its chain (that
is `failcore verify`'s whole-tape job), but each line they read is checked on its own: its layout, its
own hash and its JSON. A line that fails is still shown when it parses (it is what the tape holds), and
the command warns on stderr, naming where it is, and says in its exit status that the tape is not as
failcore wrote it. A final line without its newline is not reported here: it is a write still under way
(or cut short by a crash, which `failcore verify` reports).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import orjson

from failcore.tape.reader import TapeLine
from failcore.tape.reader import line_problem as line_problem  # re-exported: the views check lines with it

_COUNT_BUFFER: Final = 1 << 20


def parse_checked(
    raw: bytes, check: bool = True, loads: Callable[[bytes], Any] = orjson.loads
) -> tuple[dict[str, Any] | None, str | None]:
    """(the event of a complete line, or None when it is not a JSON object; why the line is broken, or
    None). Without `check` only its JSON is looked at, as iter_events does. `loads`: the caller's."""
    why = line_problem(raw) if check else None
    try:
        event = loads(raw)
    except orjson.JSONDecodeError as exc:
        return None, why or f"invalid JSON: {exc}"
    if not isinstance(event, dict):
        return None, why or "line is not a JSON object"
    return event, why


class LineNumbers:
    """The 1-based numbers of the lines starting at given byte offsets of one file, counted in one
    forward pass over the offsets asked for in increasing order (an earlier one starts again)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._newlines = 0

    def at(self, offset: int) -> int:
        if offset < self._offset:
            self._offset = self._newlines = 0
        with open(self._path, "rb", buffering=0) as f:
            f.seek(self._offset)
            while self._offset < offset:
                block = f.read(min(_COUNT_BUFFER, offset - self._offset))
                if not block:
                    break
                self._newlines += block.count(b"\n")
                self._offset += len(block)
        return self._newlines + 1


class BadLines:
    """The tape lines a command found broken, by (segment, line), each passed to `warn` once as it is
    met (at most `max_warnings` of them: the rest are counted). Usable as iter_events' `on_bad_line`."""

    def __init__(self, warn: Callable[[str, int, str], None] | None = None, max_warnings: int = 20) -> None:
        self.found: dict[tuple[str, int], str] = {}
        self._warn = warn
        self._max_warnings = max_warnings

    def __call__(self, line: TapeLine, why: str) -> None:
        if line.complete:
            self.add(line.segment, line.line, why)

    def add(self, segment: str, line: int, why: str) -> None:
        key = (segment, line)
        if key in self.found:
            return
        self.found[key] = why
        if self._warn is not None and len(self.found) <= self._max_warnings:
            self._warn(segment, line, why)

    def __len__(self) -> int:
        return len(self.found)

    @property
    def unwarned(self) -> int:
        """How many were found but not passed to `warn` (beyond `max_warnings`)."""
        return max(0, len(self.found) - self._max_warnings) if self._warn is not None else len(self.found)
