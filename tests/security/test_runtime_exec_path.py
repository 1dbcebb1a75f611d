"""Runtime attack: `programs: [git]`, and a guarded tool gives git a PATH with a directory of its own in
front, holding an `ssh` (git's transport) or a `vi`/`editor` (git's default editor): the real git,
the system's, is allowed, and starts the agent's program by name. In the env given to the spawn, or in
this process's environment the child inherits. Refused in strict mode before git starts (rule
exec.path: a child's PATH may keep, drop and reorder the run's own directories, not add one): the
agent's program never runs, and the tape holds the exec event BLOCKED naming the directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from failcore import guard, run
from tests.runtime.helpers import assert_exec_refused, planted_script, runtime_events

GIT = shutil.which("git")
pytestmark = pytest.mark.skipif(GIT is None, reason="needs git")
POLICY = "version: 1\nexec:\n  allow_shell: false\n  programs: [git]\n"
QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "stdin": subprocess.DEVNULL}


def planted_bin(tmp_path: Path, marker: Path, name: str) -> Path:
    """A directory of the agent's with a program called `name` (written before the run)."""
    return planted_script(tmp_path / "bin", marker, name, then="exit 1").parent


def with_path(directory: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_EDITOR", "VISUAL", "EDITOR", "GIT_SSH")}
    return {**env, "PATH": f"{directory}{os.pathsep}{os.environ['PATH']}", "TERM": "xterm"}


def planted_ssh(tmp_path: Path, marker: Path) -> None:
    env = with_path(planted_bin(tmp_path, marker, "ssh"))
    subprocess.run([GIT, "ls-remote", "ssh://example.invalid/r"], env=env, check=False, timeout=60, **QUIET)  # type: ignore[arg-type]


def planted_editor(tmp_path: Path, marker: Path) -> None:
    planted_bin(tmp_path, marker, "vi")  # git's default editor (Debian's git: `editor`)
    env = with_path(planted_bin(tmp_path, marker, "editor"))
    command = [GIT, "config", "--file", str(tmp_path / "cfg"), "--edit"]
    subprocess.run(command, env=env, check=False, timeout=60, **QUIET)  # type: ignore[arg-type]


def inherited_path(tmp_path: Path, marker: Path) -> None:
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{planted_bin(tmp_path, marker, 'ssh')}{os.pathsep}{old}"
    try:
        subprocess.run([GIT, "ls-remote", "ssh://example.invalid/r"], check=False, timeout=60, **QUIET)  # type: ignore[arg-type]
    finally:
        os.environ["PATH"] = old


ATTACKS: list[Callable[[Path, Path], None]] = [planted_ssh, planted_editor, inherited_path]


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.__name__ for a in ATTACKS])
def test_a_program_of_the_agents_on_the_childs_path_does_not_run(
    workdir: Path, tmp_path: Path, attack: Callable[[Path, Path], None]
) -> None:
    marker = tmp_path / "outside" / "MARKER"
    exec_event = assert_exec_refused(POLICY, tmp_path, attack, marker, "exec.path")
    events = runtime_events(tmp_path / "tape")
    assert next(e for e in events if e["kind"] == "exec") == exec_event  # the first exec is refused
    assert exec_event["reason"].startswith(f"PATH set for the child adds {tmp_path / 'bin'}")
    assert events[-1]["rule"] == "exec.path"


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.__name__ for a in ATTACKS])
def test_the_attack_works_without_the_check(
    workdir: Path, tmp_path: Path, attack: Callable[[Path, Path], None]
) -> None:
    marker = tmp_path / "outside" / "MARKER"
    attack(tmp_path, marker)
    assert marker.read_text() == "planted\n"


def test_the_runs_own_directories_in_any_order_run(workdir: Path, tmp_path: Path) -> None:
    """A PATH of the run's directories (reordered, some dropped) is no new place to find programs in."""
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY)
    directories = os.environ["PATH"].split(os.pathsep)
    path = os.pathsep.join(reversed([d for d in directories if d in ("/usr/bin", "/bin")] or directories))

    @guard
    def version() -> int:
        env = {**os.environ, "PATH": path}
        return subprocess.run([GIT, "version"], env=env, check=True, capture_output=True).returncode

    with run(policy=policy, tape=tape, strict=True):
        assert version() == 0
    assert [e["decision"] for e in runtime_events(tape)] == ["ALLOW", "ALLOW"]
