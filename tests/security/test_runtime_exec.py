"""Runtime attack: a guarded tool runs a shell command line or a program the policy does not list;
both are refused before the process starts. An allowed program runs and is recorded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from failcore import Blocked, guard, run
from tests.runtime.helpers import runtime_events, tools

POLICY = "version: 1\nexec:\n  allow_shell: false\n  programs: [{python}]\n"


def shell_string() -> object:
    return subprocess.run("touch pwned", shell=True, check=False)


def system_call() -> object:
    return os.system("touch pwned")


def unlisted_program() -> object:
    touch = shutil.which("touch")
    assert touch
    return subprocess.run([touch, "pwned"], check=False)


@pytest.mark.parametrize("attack", [shell_string, system_call, unlisted_program])
def test_refused_before_the_process_starts(
    workdir: Path, tmp_path: Path, attack: Callable[[], object]
) -> None:
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY.format(python=sys.executable))
    with run(policy=policy, tape=tape, strict=True), pytest.raises(Blocked):
        guard(attack)()
    assert not (workdir / "pwned").exists()
    exec_event, tool = runtime_events(tape)
    assert exec_event["kind"] == "exec" and exec_event["decision"] == "BLOCK"
    expected = "exec.program" if attack is unlisted_program else "exec.shell"
    assert exec_event["rule"] == tool["rule"] == expected
    assert exec_event["exec"]["shell"] is (attack is not unlisted_program)


def test_a_guarded_tool_spawning_an_allowed_process(workdir: Path, tmp_path: Path) -> None:
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY.format(python=sys.executable))

    @guard
    def run_script() -> int:
        code = "open('spawned.txt', 'w').write('child')"
        return subprocess.run([sys.executable, "-c", code], check=True).returncode

    with run(policy=policy, tape=tape, strict=True):
        assert run_script() == 0
    assert (workdir / "spawned.txt").read_text() == "child"
    exec_event = next(e for e in runtime_events(tape) if e["kind"] == "exec")
    assert (exec_event["action"], exec_event["decision"]) == ("exec.spawn", "ALLOW")
    assert exec_event["exec"]["program"] == sys.executable and exec_event["exec"]["argv"][1] == "-c"
    (tool,) = tools(tape)
    assert tool["tool"]["effects"]["exec"] == 1 and tool["outcome"] == "ok"
