"""Runtime attack: a global option of git's that takes the next word as its value, which failcore's
reading of git's command line did not know, hides the `-c` after it.

`git --shallow-file FILE -c alias.x=!CMD x`: git (git.c handle_options) takes FILE as the option's value
and goes on reading global options, so `-c alias.x=!CMD` is set and the alias runs the agent's CMD.
failcore took FILE for the subcommand and read `-c …` as that subcommand's own words: nothing judged,
`programs: [git]` let it run. (`--attr-source TREE`, git 2.42 on, reads the next word the same way.)

The real git binary, in strict mode: refused before git starts (rule exec.git_args), the agent's script
never runs (its marker file is not written), and the tape holds the exec event BLOCKED; without the
check the script does run (the attack is real)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from failcore import Blocked, guard, run
from tests.runtime.helpers import runtime_events

GIT = shutil.which("git")
pytestmark = pytest.mark.skipif(GIT is None, reason="needs git")
POLICY = "version: 1\nexec:\n  allow_shell: false\n  programs: [git]\n"


def shallow_file_then_alias(tmp_path: Path, marker: Path) -> None:
    script = tmp_path / "planted.sh"  # a program of the agent's, written before the run
    script.write_text(f"#!/bin/sh\necho planted > {marker}\n")
    script.chmod(0o755)
    argv = [GIT, "--shallow-file", str(tmp_path / "shallow"), "-c", f"alias.x=!{script}", "x"]
    subprocess.run(argv, check=False, timeout=60, capture_output=True)  # type: ignore[arg-type]


def test_the_alias_after_a_value_taking_global_option_does_not_run(workdir: Path, tmp_path: Path) -> None:
    policy, tape, marker = tmp_path / "policy.yaml", tmp_path / "tape", tmp_path / "MARKER"
    policy.write_text(POLICY)
    with run(policy=policy, tape=tape, strict=True), pytest.raises(Blocked) as refused:
        guard(shallow_file_then_alias)(tmp_path, marker)
    assert refused.value.rule == "exec.git_args"
    assert not marker.exists()
    events = runtime_events(tape)
    exec_event = next(e for e in events if e["kind"] == "exec" and e["decision"] == "BLOCK")
    assert exec_event["rule"] == "exec.git_args"
    assert (events[-1]["kind"], events[-1]["outcome"]) == ("tool", "BLOCKED")


def test_the_attack_works_without_the_check(workdir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    shallow_file_then_alias(tmp_path, marker)
    assert marker.read_text() == "planted\n"
