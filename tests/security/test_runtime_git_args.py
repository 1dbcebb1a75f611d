"""Runtime attack: `programs: [git]` (no args rule) and a guarded tool runs code of its own through git's
own command line, the real git binary: `-c alias.x=!CMD`, `-c core.sshCommand=CMD`, `-c core.pager=CMD`
(git on a terminal), `--config-env=alias.x=VAR`, `-c core.fsmonitor=CMD`, `--exec-path=DIR` (a
`git-x` of the agent's), `clone -c core.fsmonitor=CMD` (kept in the clone's configuration) and
`ls-remote --upload-pack=CMD`. The same configuration given through git's environment
(GIT_CONFIG_PARAMETERS, GIT_EXEC_PATH) was refused already. Refused in strict mode before git starts
(rule exec.git_args): the agent's script never runs (its marker file is not written), and the tape
holds the exec event BLOCKED."""

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
POLICY = "version: 1\nexec:\n  allow_shell: false\n  programs: [git]\n{extra}"
QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "stdin": subprocess.DEVNULL}


def git(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    subprocess.run([GIT, *args], env=env, cwd=cwd, check=False, timeout=60, **QUIET)  # type: ignore[arg-type]


def repository(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    if not (repo / ".git").exists():
        subprocess.run([GIT, "init", "-q", str(repo)], check=True)
    return repo


def alias(tmp_path: Path, marker: Path) -> None:
    git("-c", f"alias.x=!{planted_script(tmp_path, marker)}", "x")


def ssh_command(tmp_path: Path, marker: Path) -> None:
    git("-c", f"core.sshCommand={planted_script(tmp_path, marker)}", "ls-remote", "ssh://example.invalid/r")


def pager(tmp_path: Path, marker: Path) -> None:
    """git starts its pager only when its output is a terminal: a pseudo-terminal of the tool's."""
    script = planted_script(tmp_path, marker)
    leader, follower = os.openpty()
    try:
        subprocess.run(
            [GIT, "-c", f"core.pager={script}", "--paginate", "version"],
            stdout=follower,
            stderr=follower,
            stdin=subprocess.DEVNULL,
            check=False,
            timeout=60,
        )
    finally:
        os.close(follower)
        os.close(leader)


def config_env(tmp_path: Path, marker: Path) -> None:
    env = {**os.environ, "PLANTED": f"!{planted_script(tmp_path, marker)}"}
    git("--config-env=alias.x=PLANTED", "x", env=env)


def fsmonitor(tmp_path: Path, marker: Path) -> None:
    repo = repository(tmp_path)
    git("-c", f"core.fsmonitor={planted_script(tmp_path, marker)}", "status", cwd=repo)


def exec_path(tmp_path: Path, marker: Path) -> None:
    tools = tmp_path / "libexec"
    planted_script(tools, marker, name="git-x")
    git(f"--exec-path={tools}", "x")


def clone_config(tmp_path: Path, marker: Path) -> None:
    source = repository(tmp_path)
    script = planted_script(tmp_path, marker)
    git("clone", "-q", "-c", f"core.fsmonitor={script}", str(source), str(tmp_path / "copy"))
    git("status", cwd=tmp_path / "copy")  # the clone keeps the configuration: any git there runs it


def upload_pack(tmp_path: Path, marker: Path) -> None:
    git("ls-remote", f"--upload-pack={planted_script(tmp_path, marker)}", str(repository(tmp_path)))


ATTACKS: list[Callable[[Path, Path], None]] = [
    alias,
    ssh_command,
    pager,
    config_env,
    fsmonitor,
    exec_path,
    clone_config,
    upload_pack,
]


def prepare(tmp_path: Path, attack: Callable[[Path, Path], None]) -> None:
    """The repositories the attacks work in, made before the run (not what is under test)."""
    if attack in (fsmonitor, clone_config, upload_pack):
        repository(tmp_path)
        env = {**os.environ, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a"}
        env["GIT_COMMITTER_EMAIL"] = "a@b"
        subprocess.run(
            [GIT, "-C", str(tmp_path / "repo"), "commit", "-q", "--allow-empty", "-m", "a"],
            env=env,
            check=True,
        )


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.__name__ for a in ATTACKS])
def test_code_given_to_git_on_its_command_line_does_not_run(
    workdir: Path, tmp_path: Path, attack: Callable[[Path, Path], None]
) -> None:
    prepare(tmp_path, attack)
    marker = tmp_path / "outside" / "MARKER"
    policy = POLICY.replace("{extra}", "")
    exec_event = assert_exec_refused(policy, tmp_path, attack, marker, "exec.git_args")
    assert exec_event["reason"].startswith("git ")


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.__name__ for a in ATTACKS])
def test_the_attack_works_without_the_check(
    workdir: Path, tmp_path: Path, attack: Callable[[Path, Path], None]
) -> None:
    """The planted code does run when failcore is not asked (the attack is real)."""
    prepare(tmp_path, attack)
    marker = tmp_path / "outside" / "MARKER"
    attack(tmp_path, marker)
    assert marker.read_text() == "planted\n"


def test_data_only_configuration_and_a_listed_name_run(workdir: Path, tmp_path: Path) -> None:
    """`-c user.name=…`, `-c color.ui=never` run; GIT_CONFIG_PARAMETERS in exec.env lets any -c through
    (the alias runs: the policy says so)."""
    policy, tape, marker = tmp_path / "policy.yaml", tmp_path / "tape", tmp_path / "outside" / "MARKER"
    policy.write_text(POLICY.replace("{extra}", ""))

    @guard
    def plain() -> None:
        git("-c", "user.name=Agent", "-c", "color.ui=never", "-c", "advice.detachedHead=false", "version")

    with run(policy=policy, tape=tape, strict=True):
        plain()
    listed, second = tmp_path / "listed.yaml", tmp_path / "tape2"
    listed.write_text(POLICY.replace("{extra}", "  env: [GIT_CONFIG_PARAMETERS]\n"))
    with run(policy=listed, tape=second, strict=True):
        guard(alias)(tmp_path, marker)
    assert marker.exists()
    for recorded in (tape, second):
        assert [e["decision"] for e in runtime_events(recorded) if e["kind"] == "exec"] == ["ALLOW"]
