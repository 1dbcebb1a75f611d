"""Attack: shadow failcore's worker children from the working directory.

failcore starts worker children as `python -m failcore.…` (the DLP evidence worker, which hands the
masked events back to be written and signed; the past-cap scan process; `report`'s count workers).
`python -m` puts the working directory first on `sys.path`: an agent that can write a `failcore/`
package into the directory failcore is started from (its own workspace, say) had its code run in the
child, answering for it. A report then printed forged counts as "verified", and cached them for
every later report. Each test asserts the planted code never ran and the answers are the real ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from failcore.evidence.scanworker import spawn_worker
from failcore.report import collect_report
from tests.report_helpers import RUNS, counted_in_workers

PLANTED = r"""
import os, struct, sys
open(os.environ["PLANTED_MARK"], "w").write("ran")
for line in sys.stdin.buffer:  # a count worker that says "this run is not in that segment"
    answer = b'{"part": null}'
    sys.stdout.buffer.write(struct.pack(">Q", len(answer)) + answer)
    sys.stdout.buffer.flush()
"""


def plant(workspace: Path, module: str) -> None:
    """A `failcore` package in `workspace` whose `module` is the attacker's."""
    parts = module.split(".")
    package = workspace.joinpath(*parts[:-1])
    package.mkdir(parents=True)
    for depth in range(1, len(parts)):
        workspace.joinpath(*parts[:depth], "__init__.py").write_text("")
    package.joinpath(parts[-1] + ".py").write_text(PLANTED)


def test_a_report_started_in_a_shadowing_directory_counts_with_failcores_own_workers(
    tmp_path: Path, confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tape = counted_in_workers(tmp_path, confdir, monkeypatch, 13, 500)
    run = RUNS[0]
    reference = collect_report(tape, run, max_events=5, index=False)
    workspace = tmp_path / "agent-workspace"
    plant(workspace, "failcore.report.countworker")
    mark = tmp_path / "mark"
    monkeypatch.setenv("PLANTED_MARK", str(mark))
    monkeypatch.setenv("FAILCORE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(workspace)
    cold = collect_report(tape, run, max_events=5)
    assert not mark.exists(), "code from the working directory ran in a count worker"
    assert cold.verification.ok
    assert cold.summary.to_dict() == reference.summary.to_dict()
    monkeypatch.chdir(tmp_path)  # later, elsewhere, from the cache
    warm = collect_report(tape, run, max_events=5)
    assert warm.summary.to_dict() == reference.summary.to_dict()


@pytest.mark.parametrize("module", ["failcore.evidence.scanchild", "failcore.evidence.pastcapworker"])
def test_a_proxy_started_in_a_shadowing_directory_runs_failcores_own_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    workspace = tmp_path / "agent-workspace"
    plant(workspace, module)
    mark = tmp_path / "mark"
    monkeypatch.setenv("PLANTED_MARK", str(mark))
    monkeypatch.chdir(workspace)
    child = spawn_worker(module)
    assert child.stdin is not None
    child.stdin.close()  # a worker ends when its stdin closes
    child.wait(timeout=60)
    assert not mark.exists(), f"code from the working directory ran as {module}"
