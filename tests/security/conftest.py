"""Fixtures for tests/security/: one test per attack, each through the real proxy, each asserting
what reached a logging upstream (`LoggingUpstream`) and what the tape holds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.upstream import LoggingUpstream


@pytest.fixture
def logging_upstream(tmp_path: Path) -> Iterator[LoggingUpstream]:
    """A TLS logging upstream on 127.0.0.1: `start_proxy(..., upstream_ca=up.ca_path)` trusts it."""
    with LoggingUpstream(tmp_path / "logging-upstream") as up:
        yield up


@pytest.fixture
def plain_logging_upstream(tmp_path: Path) -> Iterator[LoggingUpstream]:
    with LoggingUpstream(tmp_path / "logging-upstream-plain", tls=False) as up:
        yield up


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """For the runtime attacks (test_runtime_*.py): tmp_path/work as the current directory."""
    from tests.runtime.helpers import enter_workdir

    return enter_workdir(tmp_path, monkeypatch)


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """For the past-cap evidence tests: a fresh past-cap scan-process manager for this test's proxy
    (the proxy runs in this process)."""
    from failcore.evidence import pastcapworker

    fresh = pastcapworker._Manager()
    monkeypatch.setattr(pastcapworker, "_manager", fresh)
    yield fresh
    fresh.close()
