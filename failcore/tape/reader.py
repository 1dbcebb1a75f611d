"""Lazy reading of a tape directory: segments, raw lines, parsed events, live following, head.

Line format (fixed byte layout, so integrity tools never need to parse JSON):
`{"prev":"<64 hex>","seq":<int>,<event fields>,"h":"<64 hex>"}` + newline, where
h = sha256(line[:-72] + b"}") over the line without its newline. Nothing here holds more than one
line (or one read buffer) in memory at a time.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

MANIFEST_FILE: Final = "manifest.json"
TAPE_PUBLIC_KEY_FILE: Final = "signing-key.pub"
GENESIS_PREV: Final = b"0" * 64

LINE_PREFIX: Final = b'{"prev":"'
SEQ_MARK: Final = b'","seq":'
HASH_MARK: Final = b',"h":"'
PREV_SLICE: Final = slice(9, 73)
SEQ_START: Final = 81
# Bytes after the hashed content in a line without its newline: ,"h":"<64 hex>"}
HASH_SUFFIX_LEN: Final = 72
CHECKPOINT_MARK: Final = b'"kind":"checkpoint",'

# ASCII digits only (`\d` would take any Unicode digit), matched whole (`$` would let a newline follow).
_SEGMENT_RE: Final = re.compile(r"seg-([0-9]{6,})\.jsonl")
_READ_BUFFER: Final = 1 << 20
_TAIL_CHUNK: Final = 1 << 16


class TapeFormatError(Exception):
    def __init__(self, segment: str, line: int, message: str) -> None:
        super().__init__(f"{segment}:{line}: {message}")
        self.segment = segment
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class TapeLine:
    segment: str
    line: int  # 1-based within the segment
    raw: bytes  # without the newline
    complete: bool  # False for a final line cut short (no newline), e.g. after a crash mid-write


def segment_name(number: int) -> str:
    return f"seg-{number:06d}.jsonl"


def segment_number(name: str) -> int | None:
    """The number of a segment file, or None for any name but the exact one `segment_name` gives it:
    `seg-0000002.jsonl` beside `seg-000002.jsonl` is a second file, not a second copy of segment 2, and
    no reader shows it (`failcore verify` names it as a break)."""
    match = _SEGMENT_RE.fullmatch(name)
    if match is None:
        return None
    number = int(match.group(1))
    return number if segment_name(number) == name else None


def list_segments(tape_dir: Path) -> list[Path]:
    """Segment files of a tape, ordered by segment number (not by name, so seg-1000000 sorts last)."""
    tape_dir = Path(tape_dir)
    if not tape_dir.is_dir():
        return []
    numbered = [(n, p) for p in tape_dir.iterdir() if (n := segment_number(p.name)) is not None]
    return [p for _, p in sorted(numbered)]


def read_manifest(tape_dir: Path) -> dict[str, Any] | None:
    """The manifest as written by the writer, or None when absent. Raises ValueError when unreadable."""
    path = Path(tape_dir) / MANIFEST_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        manifest = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("segments"), list):
        raise ValueError(f"{path}: not a tape manifest")
    return manifest


# --- byte-level accessors (no JSON parsing) -------------------------------------------------------


def is_well_formed(raw: bytes) -> bool:
    """Whether a line (without newline) has the fixed prefix/suffix layout; says nothing about its hash."""
    return (
        raw.startswith(LINE_PREFIX)
        and raw[73:SEQ_START] == SEQ_MARK
        and raw.endswith(b'"}')
        and len(raw) >= SEQ_START + 2 + HASH_SUFFIX_LEN
        and raw[-HASH_SUFFIX_LEN : -HASH_SUFFIX_LEN + 6] == HASH_MARK
        and _seq_end(raw) > SEQ_START
    )


def line_prev(raw: bytes) -> bytes:
    return raw[PREV_SLICE]


def line_hash(raw: bytes) -> bytes:
    return raw[-66:-2]


def line_seq(raw: bytes) -> int:
    end = _seq_end(raw)
    if end <= SEQ_START:
        raise ValueError("line has no seq")
    return int(raw[SEQ_START:end])


def compute_line_hash(raw: bytes) -> bytes:
    """The hash a well-formed line must carry: sha256 over everything before `,"h":` closed with `}`."""
    digest = hashlib.sha256(raw[:-HASH_SUFFIX_LEN])
    digest.update(b"}")
    return digest.hexdigest().encode("ascii")


def line_problem(raw: bytes) -> str | None:
    """Why a complete line (without its newline) is not as failcore's writer wrote it, or None. Says
    nothing about its place in the chain: a line edited with its hash recomputed passes here."""
    if not is_well_formed(raw):
        return "not a tape line (its layout is not the one failcore writes)"
    if compute_line_hash(raw) != line_hash(raw):
        return "edited: its content does not match its hash"
    return None


def is_checkpoint(raw: bytes) -> bool:
    # The writer puts "kind" first in checkpoint events, so the mark sits right after seq's comma.
    end = _seq_end(raw)
    return end > SEQ_START and raw.startswith(CHECKPOINT_MARK, end + 1)


def _seq_end(raw: bytes) -> int:
    """Index of the comma ending the seq digits, or -1 when the digits are missing or malformed."""
    end = raw.find(b",", SEQ_START, SEQ_START + 21)
    if end <= SEQ_START or not raw[SEQ_START:end].isdigit():
        return -1
    return end


# --- lines and events ---------------------------------------------------------------------------


def iter_segment_lines(path: Path) -> Iterator[TapeLine]:
    name = path.name
    with open(path, "rb", buffering=_READ_BUFFER) as f:
        for number, raw in enumerate(f, 1):
            if raw.endswith(b"\n"):
                yield TapeLine(name, number, raw[:-1], True)
            else:
                yield TapeLine(name, number, raw, False)


def iter_lines(tape_dir: Path, *, start_segment: int = 0) -> Iterator[TapeLine]:
    """Every line of the tape in order; `start_segment` skips segments numbered below it."""
    for path in list_segments(tape_dir):
        number = segment_number(path.name)
        if number is not None and number >= start_segment:
            yield from iter_segment_lines(path)


def _raise_bad_line(line: TapeLine, message: str) -> None:
    raise TapeFormatError(line.segment, line.line, message)


def iter_events(
    tape_dir: Path,
    *,
    run: str | None = None,
    kinds: Collection[str] | None = None,
    on_bad_line: Callable[[TapeLine, str], None] | None = None,
    start_segment: int = 0,
    check_lines: bool = False,
) -> Iterator[dict[str, Any]]:
    """Parsed events (including prev/seq/h), optionally only those of one run and/or some kinds, from
    segment `start_segment` on.

    Lines that are truncated or not JSON objects go to `on_bad_line`; by default they raise
    TapeFormatError naming segment:line. With `check_lines`, so does a line (of the run and kinds asked
    for) whose layout or own hash is not as the writer wrote it (`line_problem`); it is still yielded
    when it parses. Filters first look for the exact bytes orjson writes for
    `"run":…` / `"kind":…` so non-matching lines are skipped without being parsed.
    """
    report_bad = on_bad_line if on_bad_line is not None else _raise_bad_line
    if isinstance(kinds, str):
        kinds = (kinds,)
    run_needle = b'"run":' + orjson.dumps(run) if run is not None else None
    kind_set = frozenset(kinds) if kinds is not None else None
    kind_needles = tuple(b'"kind":' + orjson.dumps(k) for k in kind_set) if kind_set is not None else ()
    for line in iter_lines(tape_dir, start_segment=start_segment):
        if not line.complete:
            report_bad(line, "truncated line (no trailing newline)")
            continue
        raw = line.raw
        if run_needle is not None and run_needle not in raw:
            continue
        if kind_set is not None and not any(needle in raw for needle in kind_needles):
            continue
        if check_lines and (problem := line_problem(raw)) is not None:
            report_bad(line, problem)
        event = _parse_event(line, report_bad)
        if event is None:
            continue
        if run is not None and event.get("run") != run:
            continue
        if kind_set is not None and event.get("kind") not in kind_set:
            continue
        yield event


def _parse_event(line: TapeLine, report_bad: Callable[[TapeLine, str], None]) -> dict[str, Any] | None:
    try:
        event = orjson.loads(line.raw)
    except orjson.JSONDecodeError as exc:
        report_bad(line, f"invalid JSON: {exc}")
        return None
    if not isinstance(event, dict):
        report_bad(line, "line is not a JSON object")
        return None
    return event


# --- following a live tape ----------------------------------------------------------------------


def follow(
    tape_dir: Path,
    *,
    poll: float = 0.2,
    from_end: bool = True,
    stop: Callable[[], bool] | None = None,
    on_bad_line: Callable[[TapeLine, str], None] | None = None,
    check_lines: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield events as a writer appends them, like `tail -f`, moving on when the writer rotates.

    The start position is fixed when this is called (not on the first `next()`): with `from_end` only
    lines completed after the call are yielded. Bad lines (e.g. a line cut short by a crash) are passed
    to `on_bad_line` or skipped: a live view must not die on them; with `check_lines` a line failing
    `line_problem` goes there too (and is yielded if it parses). Ends when `stop()` returns True.
    """
    tape_dir = Path(tape_dir)
    segments = list_segments(tape_dir)
    if not segments:
        return _follow(tape_dir, None, 0, 0, poll, stop, on_bad_line, check_lines)
    if not from_end:
        return _follow(tape_dir, segments[0], 0, 0, poll, stop, on_bad_line, check_lines)
    offset, lines_before = _end_of_complete_lines(segments[-1])
    return _follow(tape_dir, segments[-1], offset, lines_before, poll, stop, on_bad_line, check_lines)


def _follow(
    tape_dir: Path,
    path: Path | None,
    offset: int,
    lines_before: int,
    poll: float,
    stop: Callable[[], bool] | None,
    on_bad_line: Callable[[TapeLine, str], None] | None,
    check_lines: bool,
) -> Iterator[dict[str, Any]]:
    report_bad = on_bad_line if on_bad_line is not None else (lambda _line, _message: None)

    def parse(line: TapeLine) -> dict[str, Any] | None:
        if check_lines and (problem := line_problem(line.raw)) is not None:
            report_bad(line, problem)
        return _parse_event(line, report_bad)

    cursor = _FollowCursor(path, offset, lines_before)
    try:
        while stop is None or not stop():
            if cursor.path is None:
                segments = list_segments(tape_dir)
                if not segments:
                    time.sleep(poll)
                    continue
                cursor.switch_to(segments[0])
            lines = cursor.read_new_lines()
            if lines:
                for line in lines:
                    event = parse(line)
                    if event is not None:
                        yield event
                continue
            next_segment = _segment_after(tape_dir, cursor.path)
            if next_segment is None:
                time.sleep(poll)
                continue
            # The writer finishes a segment before creating the next: one more read gets its last lines.
            for line in cursor.read_new_lines():
                event = parse(line)
                if event is not None:
                    yield event
            leftover = cursor.take_partial()
            if leftover is not None:
                report_bad(leftover, "truncated line (no trailing newline)")
            cursor.switch_to(next_segment)
    finally:
        cursor.close()


class _FollowCursor:
    """Read position in one segment, keeping a partial last line until its newline arrives."""

    def __init__(self, path: Path | None, offset: int, lines_before: int) -> None:
        self.path = path
        self._file = None
        self._offset = offset
        self._line_number = lines_before
        self._partial = b""

    def switch_to(self, path: Path) -> None:
        self.close()
        self.path = path
        self._offset = 0
        self._line_number = 0
        self._partial = b""

    def read_new_lines(self) -> list[TapeLine]:
        assert self.path is not None
        if self._file is None:
            try:
                self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 - kept open across polls
            except FileNotFoundError:
                return []
            self._file.seek(self._offset)
        chunk = self._file.read(_READ_BUFFER)
        if not chunk:
            return []
        data = self._partial + chunk
        pieces = data.split(b"\n")
        self._partial = pieces.pop()
        lines = []
        for raw in pieces:
            self._line_number += 1
            lines.append(TapeLine(self.path.name, self._line_number, raw, True))
        return lines

    def take_partial(self) -> TapeLine | None:
        if not self._partial or self.path is None:
            return None
        line = TapeLine(self.path.name, self._line_number + 1, self._partial, False)
        self._partial = b""
        return line

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _segment_after(tape_dir: Path, current: Path) -> Path | None:
    current_number = segment_number(current.name)
    for path in list_segments(tape_dir):
        number = segment_number(path.name)
        if number is not None and current_number is not None and number > current_number:
            return path
    return None


def _end_of_complete_lines(path: Path) -> tuple[int, int]:
    """(offset just after the last newline, number of complete lines before it) of a segment."""
    offset = 0
    count = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_READ_BUFFER):
            newlines = chunk.count(b"\n")
            if newlines:
                count += newlines
                offset = f.tell() - len(chunk) + chunk.rfind(b"\n") + 1
    return offset, count


# --- head ---------------------------------------------------------------------------------------


def last_complete_line(path: Path) -> bytes | None:
    """The last newline-terminated line of a file (without newline), reading only the file's tail."""
    with open(path, "rb", buffering=0) as f:
        size = f.seek(0, 2)
        end = _rfind_newline(f, size)
        if end < 0:
            return None
        start = _rfind_newline(f, end) + 1
        f.seek(start)
        return f.read(end - start)


def _rfind_newline(f: Any, before: int) -> int:
    """Position of the last b'\\n' strictly before `before`, scanning backwards in chunks; -1 if none."""
    position = before
    while position > 0:
        chunk_start = max(0, position - _TAIL_CHUNK)
        f.seek(chunk_start)
        chunk = f.read(position - chunk_start)
        found = chunk.rfind(b"\n")
        if found >= 0:
            return chunk_start + found
        position = chunk_start
    return -1


def tape_head(tape_dir: Path) -> tuple[int, str]:
    """(seq, h) of the tape's last complete line — (0, genesis) for an empty tape — from file tails only."""
    for path in reversed(list_segments(tape_dir)):
        raw = last_complete_line(path)
        if raw is None:
            continue
        if not is_well_formed(raw):
            raise TapeFormatError(path.name, 0, "last complete line is not a well-formed tape line")
        return line_seq(raw), line_hash(raw).decode("ascii")
    return 0, GENESIS_PREV.decode("ascii")
