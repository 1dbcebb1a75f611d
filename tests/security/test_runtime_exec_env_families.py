"""Runtime attack: variables of a child's environment exec.env did not judge yet. PERL5DB (the code
`perl -d` loads as its debugger: the real perl runs the agent's BEGIN block), GIT_TRACE=/path (the real
git appends its trace to a file outside the write roots), HOME="" (an empty value was let through: git
then reads /.gitconfig, Node's os.homedir() is "" and ~/.npmrc the working directory's), and the
configuration of yarn (YARN_*, e.g. YARN_YARN_PATH: the yarn release it runs), RubyGems (GEM_HOME,
GEM_PATH), bundler (BUNDLE_GEMFILE: the Ruby file it evaluates) and XDG_CONFIG_DIRS, in the env given
to an allowed program. Refused in strict mode before the spawn (rule exec.env): the agent's code never
runs, no file is written, and the tape holds the exec event BLOCKED naming the variable."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from failcore import Blocked, guard, run
from tests.runtime.helpers import runtime_events

GIT, PERL = shutil.which("git"), shutil.which("perl")
POLICY = "version: 1\nfs:\n  write: ['.']\nexec:\n  allow_shell: false\n  programs: [git, perl]\n"


def perl_debugger(marker: Path) -> dict[str, str]:
    return {
        "PERL5DB": f'BEGIN {{ open my $f, ">", "{marker}"; print $f "planted\\n"; close $f }} sub DB::DB {{}}'
    }


def spawn(name: str, values: dict[str, str]) -> None:
    """`name` (git or perl) started with `values` in its environment."""
    argv = [PERL, "-d", "-e", "0"] if name == "perl" else [GIT, "version"]
    subprocess.run(argv, env={**os.environ, **values}, check=False, timeout=60, capture_output=True)


# (program, variables, the variable the refusal names); MARKER stands for the file the attack writes.
ATTACKS: dict[str, tuple[str, dict[str, str], str]] = {
    "perl5db": ("perl", {"PERL5DB": "MARKER"}, "PERL5DB"),
    "git_trace": ("git", {"GIT_TRACE": "MARKER"}, "GIT_TRACE"),
    "git_trace2_event": ("git", {"GIT_TRACE2_EVENT": "MARKER"}, "GIT_TRACE2_EVENT"),
    "empty_home": ("git", {"HOME": ""}, "HOME"),
    "yarn_path": ("git", {"YARN_YARN_PATH": "../outside/planted.cjs"}, "YARN_YARN_PATH"),
    "gem_home": ("git", {"GEM_HOME": "../outside/gems"}, "GEM_HOME"),
    "gem_path": ("git", {"GEM_PATH": "../outside/gems"}, "GEM_PATH"),
    "bundle_gemfile": ("git", {"BUNDLE_GEMFILE": "../outside/Gemfile"}, "BUNDLE_GEMFILE"),
    "xdg_config_dirs": ("git", {"XDG_CONFIG_DIRS": "../outside"}, "XDG_CONFIG_DIRS"),
}
REAL = ["perl5db", "git_trace", "git_trace2_event"]


def attack_values(case: str, marker: Path) -> dict[str, str]:
    _, values, _ = ATTACKS[case]
    if case == "perl5db":
        return perl_debugger(marker)
    return {name: str(marker) if value == "MARKER" else value for name, value in values.items()}


@pytest.mark.parametrize("case", list(ATTACKS))
def test_the_variable_is_judged_before_the_spawn(workdir: Path, tmp_path: Path, case: str) -> None:
    program, _, name = ATTACKS[case]
    if (program == "perl" and PERL is None) or GIT is None:
        pytest.skip("needs git and perl")
    policy, tape, marker = tmp_path / "policy.yaml", tmp_path / "tape", tmp_path / "outside" / "MARKER"
    policy.write_text(POLICY)
    values = attack_values(case, marker)
    with run(policy=policy, tape=tape, strict=True), pytest.raises(Blocked) as refused:
        guard(spawn)(program, values)
    assert refused.value.rule == "exec.env"
    assert not marker.exists()
    exec_event, tool = runtime_events(tape)
    assert (exec_event["kind"], exec_event["decision"], exec_event["rule"]) == ("exec", "BLOCK", "exec.env")
    assert exec_event["reason"].startswith(f"{name} set for the child")
    assert (tool["outcome"], tool["rule"]) == ("BLOCKED", "exec.env")


@pytest.mark.parametrize("case", REAL)
def test_the_attack_works_without_the_check(workdir: Path, tmp_path: Path, case: str) -> None:
    program = ATTACKS[case][0]
    if (program == "perl" and PERL is None) or GIT is None:
        pytest.skip("needs git and perl")
    marker = tmp_path / "outside" / "MARKER"
    spawn(program, attack_values(case, marker))
    assert marker.exists()


@pytest.mark.skipif(GIT is None, reason="needs git")
def test_a_trace_inside_the_roots_and_to_stderr_runs(workdir: Path, tmp_path: Path) -> None:
    """GIT_TRACE=1 (stderr) and a trace file inside the write roots are no write outside them."""
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY)
    with run(policy=policy, tape=tape, strict=True):
        guard(spawn)("git", {"GIT_TRACE": "1", "GIT_TRACE2_EVENT": str(workdir / "trace.json")})
    assert (workdir / "trace.json").exists()
    assert [e["decision"] for e in runtime_events(tape)] == ["ALLOW", "ALLOW"]
