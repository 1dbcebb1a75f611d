"""Runtime attack: a guarded tool runs a program it wrote itself under a listed name (`ls`), by giving
the child a PATH of its own (Popen's env, a relative PATH entry the child resolves from its cwd) or by
a bare name posix_spawn takes from the working directory. The program is judged by the file the child
would run: refused in strict mode before it starts (the agent's `ls` never runs), and the tape holds the
exec event BLOCKED naming that file. The system's `ls` found on a PATH the child is given still runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from failcore import Blocked, guard, run
from tests.runtime.helpers import runtime_events, tools

POLICY = "version: 1\nexec:\n  allow_shell: false\n  programs: [ls]\n"

SYSTEM_LS = shutil.which("ls")
pytestmark = pytest.mark.skipif(
    not SYSTEM_LS or os.path.dirname(SYSTEM_LS) not in ("/usr/bin", "/bin"),
    reason="needs ls in /usr/bin or /bin",
)


def agent_ls(directory: Path, marker: Path) -> Path:
    directory.mkdir(exist_ok=True)
    program = directory / "ls"
    program.write_text(f"#!/bin/sh\necho agent > {marker}\n")
    program.chmod(0o755)
    return program


def popen_env_path(root: Path) -> object:
    return subprocess.run(["ls"], env={"PATH": str(root / "evil")}, capture_output=True, check=False)


def popen_relative_path_entry(root: Path) -> object:
    # "evil" on the child's PATH is relative to the directory the child starts in.
    return subprocess.run(["ls"], env={"PATH": "evil"}, cwd=root, capture_output=True, check=False)


def posix_spawn_bare_name(root: Path) -> object:
    os.chdir(root / "evil")
    try:
        pid = os.posix_spawn("ls", ["ls"], {"PATH": "/usr/bin:/bin"})
        return os.waitpid(pid, 0)
    finally:
        os.chdir(root / "work")


@pytest.mark.parametrize("attack", [popen_env_path, popen_relative_path_entry, posix_spawn_bare_name])
def test_the_agents_own_ls_is_refused_before_it_runs(
    workdir: Path, tmp_path: Path, attack: Callable[[Path], object]
) -> None:
    policy, tape, marker = tmp_path / "policy.yaml", tmp_path / "tape", tmp_path / "marker"
    policy.write_text(POLICY)
    program = agent_ls(tmp_path / "evil", marker)
    with run(policy=policy, tape=tape, strict=True), pytest.raises(Blocked) as refused:
        guard(attack)(tmp_path)
    assert refused.value.rule == "exec.program"
    assert not marker.exists()  # the agent's ls never ran
    exec_event, tool = runtime_events(tape)
    assert (exec_event["kind"], exec_event["decision"], exec_event["rule"]) == (
        "exec",
        "BLOCK",
        "exec.program",
    )
    assert exec_event["exec"]["program"] == "ls"
    assert str(program) in exec_event["reason"]  # the file it would have run
    assert (tool["outcome"], tool["rule"]) == ("BLOCKED", "exec.program")


def test_the_system_ls_on_the_childs_path_runs(workdir: Path, tmp_path: Path) -> None:
    """With PATH listed in exec.env (a directory the run's PATH lacks is refused otherwise: see
    test_runtime_exec_path.py), the program is still judged by the file found on the child's PATH."""
    policy, tape, marker = tmp_path / "policy.yaml", tmp_path / "tape", tmp_path / "marker"
    policy.write_text(POLICY + "  env: [PATH]\n")
    agent_ls(tmp_path / "evil", marker)

    @guard
    def listing() -> int:
        path = f"{os.path.dirname(SYSTEM_LS or '')}:{tmp_path / 'evil'}"  # the system's ls comes first
        return subprocess.run(["ls"], env={"PATH": path}, capture_output=True, check=True).returncode

    with run(policy=policy, tape=tape, strict=True):
        assert listing() == 0
    assert not marker.exists()
    exec_event = next(e for e in runtime_events(tape) if e["kind"] == "exec")
    assert (exec_event["decision"], exec_event["exec"]["program"]) == ("ALLOW", "ls")
    assert tools(tape)[0]["outcome"] == "ok"
