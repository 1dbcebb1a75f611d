"""What the runtime tests share: the runtime events of a tape, schema-checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers import read_tape

RUNTIME_KINDS = ("tool", "fs", "exec", "connect")


def runtime_events(tape: Path) -> list[dict[str, Any]]:
    return [e for e in read_tape(tape) if e["kind"] in RUNTIME_KINDS]


def tools(tape: Path) -> list[dict[str, Any]]:
    return [e for e in read_tape(tape) if e["kind"] == "tool"]


def tape_bytes(tape: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(tape.glob("seg-*.jsonl")))
