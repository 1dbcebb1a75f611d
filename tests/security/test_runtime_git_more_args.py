"""Runtime attacks: git command lines that run the agent's code and that failcore's reading of git's
command line (rule exec.git_args, failcore.policy.runtime_git) let through under `programs: [git]`.

- `git --shallow-file FILE -c alias.x=!CMD x`: git (git.c handle_options) takes FILE as the option's
  value and goes on reading global options, so `-c alias.x=!CMD` is set and the alias runs CMD.
  failcore took FILE for the subcommand and read `-c …` as that subcommand's own words: nothing judged.
  (`--attr-source TREE`, git 2.42 on, reads the next word the same way.)
- `git filter-branch --msg-filter CMD` (and `--tree-filter`, `--index-filter`, `--env-filter`,
  `--parent-filter`, `--commit-filter`, `--tag-name-filter`): git's filter-branch script evals each
  filter in a shell, like `rebase --exec`, which was judged; these were not.
- `git fetch-pack --upload-pack=CMD` (or `--exec=CMD`): the plumbing under `fetch --upload-pack`, which
  was judged, runs CMD as the remote's upload-pack; so does `git ls-remote --exec=CMD` (a hidden
  spelling of its `--upload-pack`, which was judged).

The real git binary, in strict mode: refused before git starts (rule exec.git_args), the agent's script
never runs (its marker file is not written), and the tape holds the exec event BLOCKED; without the
check the script does run (the attack is real)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.runtime.helpers import assert_exec_refused, planted_script

GIT = shutil.which("git")
pytestmark = pytest.mark.skipif(GIT is None, reason="needs git")
POLICY = "version: 1\nexec:\n  allow_shell: false\n  programs: [git]\n"
# (filter-branch sleeps ten seconds after a warning without it; the variable changes nothing else.)
ENV = {**os.environ, "FILTER_BRANCH_SQUELCH_WARNING": "1"}


def _git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run([GIT, *args], cwd=cwd, env=ENV, check=False, timeout=60, capture_output=True)  # type: ignore[list-item]


def shallow_file_then_alias(tmp_path: Path, marker: Path) -> None:
    script = planted_script(tmp_path, marker, then="cat")
    _git("--shallow-file", str(tmp_path / "shallow"), "-c", f"alias.x=!{script}", "x")


def filter_branch(tmp_path: Path, marker: Path) -> None:
    script = planted_script(tmp_path, marker, then="cat")
    _git("filter-branch", "-f", "--msg-filter", str(script), "HEAD", cwd=tmp_path / "repo")


def fetch_pack(tmp_path: Path, marker: Path) -> None:
    script = planted_script(tmp_path, marker, then="exit 1")
    _git("fetch-pack", f"--upload-pack={script}", str(tmp_path / "repo"), cwd=tmp_path / "repo")


def ls_remote_exec(tmp_path: Path, marker: Path) -> None:
    script = planted_script(tmp_path, marker, then="exit 1")
    _git("ls-remote", f"--exec={script}", str(tmp_path / "repo"), cwd=tmp_path / "repo")


ATTACKS: list[Callable[[Path, Path], None]] = [
    shallow_file_then_alias,
    filter_branch,
    fetch_pack,
    ls_remote_exec,
]


def _prepare(tmp_path: Path) -> None:
    """A repository with one commit, made before the run (not what is under test)."""
    repo = tmp_path / "repo"
    subprocess.run([GIT, "init", "-q", str(repo)], check=True)
    identity = ["-c", "user.name=a", "-c", "user.email=a@b"]
    subprocess.run([GIT, *identity, "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "a"], check=True)


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.__name__ for a in ATTACKS])
def test_the_agents_code_given_to_git_does_not_run(
    workdir: Path, tmp_path: Path, attack: Callable[[Path, Path], None]
) -> None:
    _prepare(tmp_path)
    assert_exec_refused(POLICY, tmp_path, attack, tmp_path / "MARKER", "exec.git_args")


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.__name__ for a in ATTACKS])
def test_the_attack_works_without_the_check(
    workdir: Path, tmp_path: Path, attack: Callable[[Path, Path], None]
) -> None:
    _prepare(tmp_path)
    marker = tmp_path / "MARKER"
    attack(tmp_path, marker)
    assert marker.read_text() == "planted\n"
