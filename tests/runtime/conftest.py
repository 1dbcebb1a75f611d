"""Fixtures for the runtime API tests: a working directory to act in and a tape of the test's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """tmp_path/work as the current directory (fs_safe's root); tmp_path/outside next to it."""
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
    yield work
