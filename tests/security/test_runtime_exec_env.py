"""Runtime attack: a guarded tool runs code of its own through a program the policy allows, by setting
a variable of the child's environment: LD_PRELOAD (a library the loader runs first), GIT_EXTERNAL_DIFF,
GIT_SSH_COMMAND and GIT_EDITOR (command lines git runs), PYTHONPATH (a sitecustomize a Python child
imports), NODE_OPTIONS (`--require`), HOME and XDG_CONFIG_HOME (a git configuration of the agent's
whose alias runs its script), an exported bash function (`BASH_FUNC_echo%%`) and SHELLOPTS=xtrace with
a PS4 holding a command substitution (both run by a bash script the policy allows), in the env given to
the spawn or in this process's environment (os.environ, os.putenv) that a child inherits. Refused in
strict mode before the spawn (rule exec.env): the agent's code never runs (its marker file is not
written), and the tape holds the exec event BLOCKED naming the variable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from failcore import Blocked, guard, run
from tests.runtime.helpers import planted_script, runtime_events

GIT, NODE, GCC = shutil.which("git"), shutil.which("node"), shutil.which("gcc")
POLICY = "version: 1\nexec:\n  allow_shell: false\n  programs: [git, node, {python}, {script}]\n{extra}"
PRELOAD_C = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen("MARKER", "w");
    if (f) { fputs("preloaded", f); fclose(f); }
}
"""


def write_policy(tmp_path: Path, extra: str = "") -> Path:
    policy = tmp_path / "policy.yaml"
    text = POLICY.replace("{python}", sys.executable).replace("{script}", str(tmp_path / "tool.sh"))
    policy.write_text(text.replace("{extra}", extra))
    return policy


def git_diff(env: dict[str, str] | None) -> None:
    Path("a").write_text("a\n")
    Path("b").write_text("b\n")
    subprocess.run([GIT, "diff", "--no-index", "--ext-diff", "a", "b"], env=env, check=False)


def env_with(**values: str) -> dict[str, str]:
    return {**os.environ, **values}


def external_diff(tmp_path: Path, marker: Path) -> None:
    git_diff(env_with(GIT_EXTERNAL_DIFF=str(planted_script(tmp_path, marker))))


def ssh_command(tmp_path: Path, marker: Path) -> None:
    env = env_with(GIT_SSH_COMMAND=f"echo planted > {marker}; false")
    subprocess.run([GIT, "ls-remote", "ssh://example.invalid/repo"], env=env, check=False)


def editor(tmp_path: Path, marker: Path) -> None:
    env = env_with(GIT_EDITOR=str(planted_script(tmp_path, marker)))
    subprocess.run([GIT, "config", "--file", "cfg", "--edit"], env=env, check=False, stdin=subprocess.DEVNULL)


def python_path(tmp_path: Path, marker: Path) -> None:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').write('planted')\n")
    subprocess.run([sys.executable, "-c", "pass"], env=env_with(PYTHONPATH=str(site)), check=False)


def node_options(tmp_path: Path, marker: Path) -> None:
    script = tmp_path / "planted.js"
    script.write_text(f"require('fs').writeFileSync({str(marker)!r}, 'planted')\n")
    env = env_with(NODE_OPTIONS=f"--require {script}")
    subprocess.run([NODE, "-e", "0"], env=env, check=False)


def preload(tmp_path: Path, marker: Path) -> None:
    library = tmp_path / "planted.so"
    env = env_with(LD_PRELOAD=str(library))
    subprocess.run([GIT, "--version"], env=env, cwd=marker.parent, check=False, stdout=subprocess.DEVNULL)


def git_alias_in(config: Path, marker: Path) -> Path:
    """A git configuration of the agent's: `git planted` runs its script (the alias starts with `!`)."""
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"[alias]\n\tplanted = !{planted_script(config.parent, marker)}\n")
    return config


def home_gitconfig(tmp_path: Path, marker: Path) -> None:
    home = tmp_path / "home"
    git_alias_in(home / ".gitconfig", marker)
    subprocess.run([GIT, "planted"], env=env_with(HOME=str(home)), check=False)


def xdg_git_config(tmp_path: Path, marker: Path) -> None:
    config_home = tmp_path / "config"
    git_alias_in(config_home / "git" / "config", marker)
    subprocess.run([GIT, "planted"], env=env_with(XDG_CONFIG_HOME=str(config_home)), check=False)


def user_script(tmp_path: Path) -> Path:
    """A bash script of the user's that the policy allows by its path (it runs `echo`)."""
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/bash\necho tool ran\n")
    script.chmod(0o755)
    return script


ECHO_FUNCTION = "BASH_FUNC_echo%%"  # bash's name for an exported function `echo`


def exported_bash_function(tmp_path: Path, marker: Path) -> None:
    env = env_with(**{ECHO_FUNCTION: f"() {{ : > {marker}; }}"})
    subprocess.run([user_script(tmp_path)], env=env, check=False)


def inherited_bash_function(tmp_path: Path, marker: Path) -> None:
    os.environ[ECHO_FUNCTION] = f"() {{ : > {marker}; }}"
    try:
        subprocess.run([user_script(tmp_path)], check=False)
    finally:
        del os.environ[ECHO_FUNCTION]


def xtrace_prompt(tmp_path: Path, marker: Path) -> None:
    env = env_with(SHELLOPTS="xtrace", PS4=f"$(: > {marker})")
    subprocess.run([user_script(tmp_path)], env=env, check=False, stderr=subprocess.DEVNULL)


def inherited_through_os_environ(tmp_path: Path, marker: Path) -> None:
    os.environ["GIT_EXTERNAL_DIFF"] = str(planted_script(tmp_path, marker))
    try:
        git_diff(None)
    finally:
        del os.environ["GIT_EXTERNAL_DIFF"]


def inherited_through_putenv(tmp_path: Path, marker: Path) -> None:
    os.putenv("GIT_EXTERNAL_DIFF", str(planted_script(tmp_path, marker)))
    try:
        git_diff(None)
    finally:
        os.unsetenv("GIT_EXTERNAL_DIFF")


ATTACKS: dict[Callable[[Path, Path], None], str] = {
    external_diff: "GIT_EXTERNAL_DIFF",
    ssh_command: "GIT_SSH_COMMAND",
    editor: "GIT_EDITOR",
    python_path: "PYTHONPATH",
    node_options: "NODE_OPTIONS",
    preload: "LD_PRELOAD",
    inherited_through_os_environ: "GIT_EXTERNAL_DIFF",
    inherited_through_putenv: "GIT_EXTERNAL_DIFF",
    home_gitconfig: "HOME",
    xdg_git_config: "XDG_CONFIG_HOME",
    exported_bash_function: "BASH_FUNC_echo%%",
    inherited_bash_function: "BASH_FUNC_echo%%",
    xtrace_prompt: "SHELLOPTS",
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=[a.__name__ for a in ATTACKS])
def test_code_planted_through_a_childs_environment_does_not_run(
    workdir: Path, tmp_path: Path, attack: Callable[[Path, Path], None]
) -> None:
    if GIT is None or (attack is node_options and NODE is None) or (attack is preload and GCC is None):
        pytest.skip("needs git (and node, gcc for those cases)")
    marker = tmp_path / "outside" / "MARKER"
    if attack is preload:  # the library, built before the run
        source = tmp_path / "planted.c"
        source.write_text(PRELOAD_C)
        subprocess.run([GCC, "-shared", "-fPIC", "-o", tmp_path / "planted.so", source], check=True)
    tape = tmp_path / "tape"
    with run(policy=write_policy(tmp_path), tape=tape, strict=True), pytest.raises(Blocked) as refused:
        guard(attack)(tmp_path, marker)
    assert refused.value.rule == "exec.env"
    assert not marker.exists()
    events = runtime_events(tape)
    exec_event = next(e for e in events if e["kind"] == "exec")
    assert (exec_event["decision"], exec_event["rule"]) == ("BLOCK", "exec.env")
    assert exec_event["reason"].startswith(f"{ATTACKS[attack]} set for the child")
    assert (events[-1]["kind"], events[-1]["outcome"], events[-1]["rule"]) == ("tool", "BLOCKED", "exec.env")


REAL = [external_diff, home_gitconfig, xdg_git_config, exported_bash_function, xtrace_prompt]


@pytest.mark.skipif(GIT is None, reason="needs git")
@pytest.mark.parametrize("attack", REAL, ids=[a.__name__ for a in REAL])
def test_the_attack_works_without_the_check(
    workdir: Path, tmp_path: Path, attack: Callable[[Path, Path], None]
) -> None:
    """The planted code does run when failcore is not asked (the attack is real)."""
    if attack is xtrace_prompt and os.geteuid() == 0:
        pytest.skip("bash (>= 4.4) does not take PS4 from the environment of a root shell")
    marker = tmp_path / "outside" / "MARKER"
    attack(tmp_path, marker)
    assert marker.exists()


@pytest.mark.skipif(GIT is None, reason="needs git")
def test_allowed_values_run(workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable the run had already (the user's own editor), a command line of an allowed program
    (GIT_PAGER=cat, cat listed) and a name listed in exec.env are let through."""
    monkeypatch.setenv("GIT_EDITOR", "/usr/bin/vi")  # the user's, before the run
    marker = tmp_path / "outside" / "MARKER"
    policy = write_policy(tmp_path, "  env: [GIT_EXTERNAL_DIFF]\n")
    policy.write_text(policy.read_text().replace("programs: [git,", "programs: [git, cat,"))
    tape = tmp_path / "tape"

    @guard
    def tool() -> None:
        subprocess.run([GIT, "version"], env=env_with(GIT_PAGER="cat"), check=True, capture_output=True)
        external_diff(tmp_path, marker)

    with run(policy=policy, tape=tape, strict=True):
        tool()
    assert marker.read_text() == "planted\n"
    events = runtime_events(tape)
    assert [(e["kind"], e["decision"]) for e in events if e["kind"] in ("exec", "tool")] == [
        ("exec", "ALLOW"),
        ("exec", "ALLOW"),
        ("tool", "ALLOW"),
    ]


def test_without_an_exec_section_nothing_is_checked(workdir: Path, tmp_path: Path) -> None:
    tape = tmp_path / "tape"
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    with run(policy=policy, tape=tape, strict=True):
        guard(subprocess.run)([sys.executable, "-c", "pass"], env=env_with(PYTHONPATH="/nowhere"), check=True)
    assert [e["decision"] for e in runtime_events(tape)] == ["ALLOW", "ALLOW"]
