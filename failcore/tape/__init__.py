"""The tape: an append-only, rotated, hash-chained and signed JSONL record of everything failcore saw.

Reading is lazy and needs nothing but this package; writing lives in `failcore.tape.writer` and
integrity checking in `failcore.tape.verify`.
"""

from failcore.tape.reader import (
    TapeFormatError,
    TapeLine,
    follow,
    iter_events,
    iter_lines,
    list_segments,
    read_manifest,
    tape_head,
)

__all__ = [
    "TapeFormatError",
    "TapeLine",
    "follow",
    "iter_events",
    "iter_lines",
    "list_segments",
    "read_manifest",
    "tape_head",
]
