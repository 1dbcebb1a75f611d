"""Attack on accountability: the DLP evidence worker cannot start (no descriptors left, say) and no
exchange follows before the run ends.

Its loss was kept to be written ahead of the next batch holding a DLP pass; a batch without one (the
run's start, its end) returned before the pending losses were written, and closing never wrote them:
the tape did not say the worker was lost. Through the real proxy: nothing reaches the logging upstream,
and the tape holds the loss, before the run's end, which counts it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from failcore.evidence import scanworker
from tests.helpers import read_tape
from tests.security.helpers import DLP_BLOCK
from tests.security.upstream import LoggingUpstream


def test_a_worker_that_could_not_start_is_on_the_tape(
    start_proxy,
    policy_file,
    plain_logging_upstream: LoggingUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_descriptors(*args: Any, **kw: Any) -> Any:
        raise OSError(24, "Too many open files")

    monkeypatch.setenv("FAILCORE_EVIDENCE_WORKER", "1")
    monkeypatch.setattr(scanworker, "spawn_worker", no_descriptors)
    proxy = start_proxy(policy_file(DLP_BLOCK))
    proxy.flush()
    proxy.stop()
    assert plain_logging_upstream.received_bytes() == b""
    kinds = [(e["kind"], (e.get("detail") or {}).get("where")) for e in read_tape(tmp_path / "tape")]
    assert ("internal_error", "evidence worker") in kinds
    run_end = [kind for kind, _ in kinds].index("run_end")
    assert kinds.index(("internal_error", "evidence worker")) < run_end
    (lost,) = [e for e in read_tape(tmp_path / "tape") if e["kind"] == "internal_error"]
    assert "could not start" in lost["error"] and "Too many open files" in lost["error"]
    (end,) = [e for e in read_tape(tmp_path / "tape") if e["kind"] == "run_end"]
    assert end["detail"]["internal_errors"] >= 1
