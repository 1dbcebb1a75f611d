"""failcore.policy.runtime_git and the PATH / empty-value rules of failcore.policy.runtime_env: what git's
command line sets (read as git's parse-options reads it) and how a child's PATH is judged. The attacks
themselves, with the real git, are in tests/security/test_runtime_git_args.py and
test_runtime_exec_path.py."""

from __future__ import annotations

import pytest

from failcore.policy.runtime import ExecRules
from failcore.policy.runtime_env import check_exec_env, judged_env_entry
from failcore.policy.runtime_git import check_git_args, git_settings

RULES = ExecRules(programs=("git",), allow_shell=False)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["git", "-c", "alias.x=!id", "x"], [("config", "-c", "alias.x=!id")]),
        (["git", "--config-env", "core.pager=V", "log"], [("config", "--config-env", "core.pager=V")]),
        (["git", "-C", "repo", "--exec-path=/d", "x"], [("GIT_EXEC_PATH", "--exec-path", "/d")]),
        (["git", "--git-dir", "/r/.git", "log"], [("GIT_DIR", "--git-dir", "/r/.git")]),
        # global options whose value is the next word (git 2.42's --attr-source too): not the subcommand
        (["git", "--shallow-file", "f", "-c", "alias.x=!id", "x"], [("config", "-c", "alias.x=!id")]),
        (["git", "--attr-source", "HEAD", "-c", "core.pager=p", "log"], [("config", "-c", "core.pager=p")]),
        # long options of a subcommand by any prefix, short ones inside a cluster, attached or not
        (["git", "ls-remote", "--upl=cmd", "."], [("command", "ls-remote --upload-pack", "cmd")]),
        (["git", "fetch", "--upload-pack", "cmd", "o"], [("command", "fetch --upload-pack", "cmd")]),
        (["git", "rebase", "-ix", "make test"], [("command", "rebase -x", "make test")]),
        (["git", "grep", "-Ocmd", "p"], [("command", "grep -O", "cmd")]),
        (["git", "clone", "--config=k.v=1", "u"], [("config", "clone --config", "k.v=1")]),
        (["git", "init", "--template", "/t"], [("GIT_TEMPLATE_DIR", "init --template", "/t")]),
        (["git", "submodule", "foreach", "id"], [("command", "submodule foreach", "id")]),
        (["git", "filter-branch", "--tree-filter=id"], [("command", "filter-branch --tree-filter", "id")]),
        # not settings: -C, --exec-path alone (prints it), grep -O alone (no command), after `--`
        (["git", "-C", "repo", "status"], []),
        (["git", "--exec-path"], []),
        (["git", "grep", "-O", "p"], []),
        (["git", "log", "--", "-x"], []),
        (["git", "commit", "-c", "HEAD"], []),
    ],
)
def test_git_settings(argv: list[str], expected: list[tuple[str, str, str]]) -> None:
    assert git_settings(argv) == expected


def test_data_only_keys_pass_and_listing_lets_configuration_through() -> None:
    argv = ["git", "-c", "user.name=A", "-c", "Color.UI=never", "-c", "advice.detachedHead=false", "log"]
    assert check_git_args(RULES, "/usr/bin/git", argv).decision == "ALLOW"
    refused = check_git_args(RULES, "git", ["git", "-c", "Core.SshCommand=x", "fetch"])
    assert (refused.decision, refused.rule) == ("BLOCK", "exec.git_args")
    assert "core.sshcommand" in (refused.reason or "")
    listed = ExecRules(programs=("git",), allow_shell=False, env=("GIT_CONFIG_PARAMETERS",))
    assert check_git_args(listed, "git", ["git", "-c", "core.sshCommand=x", "fetch"]).decision == "ALLOW"
    assert check_git_args(listed, "git", ["git", "--exec-path=/d", "x"]).decision == "BLOCK"


def test_commands_follow_allow_shell_and_other_programs_are_not_read() -> None:
    shell = ExecRules(programs=("git",), allow_shell=True)
    assert check_git_args(shell, "git", ["git", "rebase", "--exec", "make", "main"]).decision == "ALLOW"
    assert check_git_args(RULES, "git", ["git", "rebase", "--exec", "make", "main"]).decision == "BLOCK"
    assert check_git_args(RULES, "/usr/bin/hg", ["hg", "-c", "alias.x=!id"]).decision == "ALLOW"
    assert check_git_args(ExecRules(), "git", ["git", "-c", "alias.x=!id", "x"]).decision == "ALLOW"


def test_path_keeps_the_runs_directories_and_refuses_new_ones() -> None:
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    assert check_exec_env(RULES, {"PATH": "/bin:/usr/bin"}, base).decision == "ALLOW"
    for path in ("/tmp/evil:/usr/bin", "/usr/bin:", "evil:/usr/bin", ""):
        verdict = check_exec_env(RULES, {"PATH": path}, base)
        assert (verdict.decision, verdict.rule) == ("BLOCK", "exec.path"), path
    listed = ExecRules(programs=("git",), allow_shell=False, env=("PATH",))
    assert check_exec_env(listed, {"PATH": "/tmp/evil"}, base).decision == "ALLOW"


def test_an_empty_value_counts_where_it_names_a_place_not_where_it_names_nothing() -> None:
    assert check_exec_env(RULES, {"HOME": ""}, {"HOME": "/root"}).rule == "exec.env"
    assert check_exec_env(RULES, {"HOME": ""}, {"HOME": ""}).decision == "ALLOW"  # the run's own
    for name in ("GIT_PAGER", "LD_PRELOAD", "GIT_TRACE"):
        assert check_exec_env(RULES, {name: ""}, {}).decision == "ALLOW", name
    assert judged_env_entry("GIT_TRACE2_EVENT") == "GIT_TRACE*"
    assert judged_env_entry("yarn_yarn_path") == "YARN_*"
