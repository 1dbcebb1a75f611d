"""The variables `exec.env` judges in a child's environment (failcore.policy.runtime_env): each name
below is one the program's own documentation says it runs code, reads its configuration or startup
files from, or loads modules through (git-config(1) FILES, bash(1) SHELLOPTS/PS4/exported functions,
vim's VIMINIT/EXINIT, config(5ssl) OPENSSL_CONF, curl(1) CURL_HOME, wget(1) WGETRC, npm-config(7),
python(1) PYTHONWARNINGS, perlrun(1), ruby(1), the JDK's JAVA_TOOL_OPTIONS)."""

from __future__ import annotations

import pytest

from failcore.policy import parse_policy
from failcore.policy.runtime import ExecRules
from failcore.policy.runtime_env import CODE_ENV, check_exec_env, code_env, code_env_entry
from tests.policy_helpers import problems_of

RULES = ExecRules(programs=("git", "cat"), allow_shell=False)

# Where a program finds a configuration or startup file, or code in a language of its own: refused.
REFUSED = [
    ("HOME", "/tmp/agent-home"),
    ("XDG_CONFIG_HOME", "/tmp/agent-config"),
    ("OPENSSL_CONF", "/tmp/openssl.cnf"),
    ("VIMINIT", ":!touch /tmp/m"),
    ("EXINIT", ":!touch /tmp/m"),
    ("BASH_FUNC_echo%%", "() { touch /tmp/m; }"),
    ("BASH_FUNC_ls()", "() { touch /tmp/m; }"),  # bash before 4.3-patch 25 named them so
    ("SHELLOPTS", "xtrace"),
    ("PS4", "$(touch /tmp/m)"),
    ("PYTHONWARNINGS", "ignore::antigravity.Foo"),
    ("npm_config_script_shell", "/tmp/planted"),
    ("NPM_CONFIG_USERCONFIG", "/tmp/npmrc"),  # npm reads its variables in any case
    ("GIT_CONFIG_PARAMETERS", "'alias.x=!touch /tmp/m'"),
    ("GIT_CONFIG_COUNT", "1"),
    ("GIT_CONFIG_KEY_0", "core.pager"),
    ("GIT_TEMPLATE_DIR", "/tmp/templates"),
    ("PROMPT_COMMAND", "touch /tmp/m"),
    ("ZDOTDIR", "/tmp/zdot"),
    ("PERL5OPT", "-Mplanted"),
    ("PERL5LIB", "/tmp/lib"),
    ("RUBYOPT", "-rplanted"),
    ("RUBYLIB", "/tmp/lib"),
    ("JAVA_TOOL_OPTIONS", "-javaagent:/tmp/a.jar"),
    ("_JAVA_OPTIONS", "-javaagent:/tmp/a.jar"),
    ("CURL_HOME", "/tmp/curlhome"),
    ("WGETRC", "/tmp/wgetrc"),
]
# Command lines a program runs: judged as a spawn of the command.
COMMANDS = ["GIT_PROXY_COMMAND", "GIT_ASKPASS", "SSH_ASKPASS", "WGET_ASKPASS", "LESSOPEN", "LESSCLOSE"]


@pytest.mark.parametrize(("name", "value"), REFUSED, ids=[n for n, _ in REFUSED])
def test_a_new_value_is_refused_naming_the_variable(name: str, value: str) -> None:
    verdict = check_exec_env(RULES, {name: value}, {})
    assert (verdict.decision, verdict.rule) == ("BLOCK", "exec.env")
    assert verdict.reason.startswith(f"{name} set for the child makes it load or run other code")


@pytest.mark.parametrize(("name", "value"), REFUSED, ids=[n for n, _ in REFUSED])
def test_the_runs_own_value_and_a_listed_name_pass(name: str, value: str) -> None:
    assert check_exec_env(RULES, {name: value}, {name: value}).decision == "ALLOW"
    entry = code_env_entry(name)
    assert entry is not None and entry in CODE_ENV
    listed = ExecRules(programs=("git",), allow_shell=False, env=(entry,))
    assert check_exec_env(listed, {name: value}, {}).decision == "ALLOW"


@pytest.mark.parametrize("name", COMMANDS)
def test_a_command_line_is_judged_as_a_spawn(name: str) -> None:
    assert check_exec_env(RULES, {name: "cat"}, {}).decision == "ALLOW"
    unlisted = check_exec_env(RULES, {name: "/tmp/planted.sh"}, {})
    assert (unlisted.decision, unlisted.rule) == ("BLOCK", "exec.env")
    assert unlisted.reason.startswith(f"{name} set for the child makes it run '/tmp/planted.sh'")
    assert "not among the allowed programs" in unlisted.reason
    shell = check_exec_env(RULES, {name: "cat; touch /tmp/m"}, {})
    assert shell.decision == "BLOCK" and "shell command lines are refused" in shell.reason


def test_patterns_cover_their_family_and_nothing_else() -> None:
    assert code_env_entry("BASH_FUNC_git%%") == "BASH_FUNC_*"
    assert code_env_entry("npm_config_registry") == code_env_entry("NPM_CONFIG_REGISTRY") == "npm_config_*"
    assert code_env_entry("GIT_CONFIG_VALUE_3") == "GIT_CONFIG_VALUE_*"
    # Names no program runs code through: a terminal description, readline's key bindings, the locale.
    for name in ("INPUTRC", "TERMINFO", "LANG", "PATH", "BASH", "NPM_TOKEN", "GIT_AUTHOR_NAME", "home"):
        assert code_env_entry(name) is None, name
    env = {"HOME": "/h", "BASH_FUNC_f%%": "() { :; }", "LANG": "C", "npm_config_x": "1"}
    assert code_env(env) == {"HOME": "/h", "BASH_FUNC_f%%": "() { :; }", "npm_config_x": "1"}


def test_a_pattern_listed_lets_its_family_through_and_a_name_only_itself() -> None:
    env = {"BASH_FUNC_a%%": "() { :; }", "BASH_FUNC_b%%": "() { :; }"}
    family = ExecRules(programs=("git",), allow_shell=False, env=("BASH_FUNC_*",))
    assert check_exec_env(family, env, {}).decision == "ALLOW"
    one = ExecRules(programs=("git",), allow_shell=False, env=("BASH_FUNC_a%%",))
    verdict = check_exec_env(one, env, {})
    assert verdict.decision == "BLOCK" and verdict.reason.startswith("BASH_FUNC_b%% set for the child")
    assert "list BASH_FUNC_* in exec.env" in verdict.reason


def test_exec_env_takes_names_patterns_and_names_of_a_pattern() -> None:
    policy = parse_policy(
        "version: 1\nexec:\n  programs: [git]\n  env: [HOME, BASH_FUNC_*, npm_config_registry]\n"
    )
    assert policy.exec.env == ("HOME", "BASH_FUNC_*", "npm_config_registry")


@pytest.mark.parametrize(
    ("typed", "meant"),
    [("ld_preload", "LD_PRELOAD"), ("Home", "HOME"), ("xdg_config_hom", "XDG_CONFIG_HOME")],
)
def test_the_hint_ignores_case(typed: str, meant: str) -> None:
    found = problems_of(f"version: 1\nexec:\n  env: [{typed}]\n")
    assert len(found) == 1 and f'Did you mean "{meant}"?' in found[0][2], found
