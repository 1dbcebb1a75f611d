"""Fixtures for the runtime API tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runtime.helpers import enter_workdir


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return enter_workdir(tmp_path, monkeypatch)
