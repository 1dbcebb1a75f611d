"""Which files a tape directory may hold: the names failcore's writer gives its files, and the rest.

Readers take only the exact names the writer writes (`reader.segment_name`), so a file added beside
them — `seg-0000002.jsonl` next to `seg-000002.jsonl`, a segment name with non-ASCII digits — is never
shown. `failcore verify` names such a segment-like file as a break (someone put it there to be read as
part of the tape) and any other unexpected file as a warning.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from failcore.tape.reader import MANIFEST_FILE, TAPE_PUBLIC_KEY_FILE, segment_number

LOCK_FILE: Final = ".lock"
# Earlier signing keys of the tape, named by the first 16 hex digits of their id (tape/writer.py).
_OLD_KEY_RE: Final = re.compile(r"signing-key-[0-9a-f]{16}\.pub")
# What write_private_file leaves behind when killed between creating its temporary file and renaming it.
_TEMPORARY_RE: Final = re.compile(r"\.(?:manifest\.json|signing-key(?:-[0-9a-f]{16})?\.pub)\.[0-9]+\.tmp")
_KNOWN: Final = frozenset({MANIFEST_FILE, TAPE_PUBLIC_KEY_FILE, LOCK_FILE})


def is_old_key_file(name: str) -> bool:
    return _OLD_KEY_RE.fullmatch(name) is not None


@dataclass(slots=True)
class Strays:
    """Files of a tape directory that failcore did not name that way, sorted by name."""

    segment_like: list[str] = field(default_factory=list)  # start like a segment; no reader shows them
    not_files: list[str] = field(default_factory=list)  # a directory (or device…) under a segment's name
    other: list[str] = field(default_factory=list)


def stray_files(tape_dir: Path) -> Strays:
    strays = Strays()
    try:
        names = sorted(os.listdir(tape_dir))
    except OSError:
        return strays
    for name in names:
        if segment_number(name) is not None:
            if not os.path.isfile(os.path.join(tape_dir, name)):
                strays.not_files.append(name)
            continue
        if name in _KNOWN or is_old_key_file(name) or _TEMPORARY_RE.fullmatch(name):
            continue
        if name.casefold().startswith("seg"):
            strays.segment_like.append(name)
        else:
            strays.other.append(name)
    return strays
