"""What the runtime tests share: the runtime events of a tape, schema-checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import read_tape

RUNTIME_KINDS = ("tool", "fs", "exec", "connect")


def runtime_events(tape: Path) -> list[dict[str, Any]]:
    return [e for e in read_tape(tape) if e["kind"] in RUNTIME_KINDS]


def tools(tape: Path) -> list[dict[str, Any]]:
    return [e for e in read_tape(tape) if e["kind"] == "tool"]


def tape_bytes(tape: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(tape.glob("seg-*.jsonl")))


def enter_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path/work as the current directory (the tests' fs root), tmp_path/outside next to it, and
    no enclosing `failcore run` in the environment."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "outside").mkdir()
    for name in (
        "FAILCORE_EVENTS",
        "FAILCORE_EVENTS_TOKEN",
        "FAILCORE_RUN_ID",
        "FAILCORE_POLICY",
        "FAILCORE_TAPE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(work)
    return work
