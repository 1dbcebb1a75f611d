"""The runtime API's check of a child's environment (`exec.env`): variables that make an allowed program
run code the agent chose, judged with the exec rules of `failcore.policy.runtime`; the child's PATH
(rule `exec.path`) and files git's trace variables make it write (judged with the fs rules)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from failcore.policy.runtime import ALLOWED, ExecRules, FsRules, Verdict, check_exec, check_fs

# Environment variables that make an allowed program run other code. A library loaded into every child
# process (LD_PRELOAD…): each file is judged as a program the spawn runs. A command line the program runs
# (git's pager, editor, diff and ssh, less's preprocessor…): judged as a spawn of it (through a shell
# when it holds shell syntax, as git runs it). Anything else is refused: a library or module search
# path, a startup file or directory a shell, interpreter or tool reads its configuration from (HOME and
# XDG_CONFIG_HOME hold ~/.gitconfig and its aliases, hooks and pager; ~/.curlrc, ~/.npmrc, Python's
# user site-packages, ~/.ssh/config…), interpreter options, startup commands in a language of their own
# (VIMINIT, PS4 with SHELLOPTS=xtrace, exported bash functions), git configuration or repository.
ENV_LIBRARIES: tuple[str, ...] = ("LD_PRELOAD", "LD_AUDIT", "DYLD_INSERT_LIBRARIES")
ENV_COMMANDS: tuple[str, ...] = (
    "GIT_EXTERNAL_DIFF", "GIT_SSH_COMMAND", "GIT_SSH", "GIT_EDITOR", "GIT_SEQUENCE_EDITOR", "GIT_PAGER",
    "GIT_ASKPASS", "SSH_ASKPASS", "SUDO_ASKPASS", "WGET_ASKPASS", "GIT_PROXY_COMMAND", "EDITOR",
    "VISUAL", "PAGER", "MANPAGER", "SYSTEMD_PAGER", "LESSOPEN", "LESSCLOSE", "BROWSER",
)  # fmt: skip
ENV_CODE: tuple[str, ...] = (
    # where the loader, shells, interpreters and tools find code, configuration and startup files
    "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH", "DYLD_FRAMEWORK_PATH", "GCONV_PATH", "HOME",
    "XDG_CONFIG_HOME", "BASH_ENV", "ENV", "ZDOTDIR", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
    "PYTHONUSERBASE", "PYTHONPYCACHEPREFIX", "NODE_PATH", "PERL5LIB", "PERLLIB", "RUBYLIB",
    "OPENSSL_CONF", "OPENSSL_ENGINES", "OPENSSL_MODULES", "CURL_HOME", "WGETRC", "SYSTEM_WGETRC",
    "VIMRUNTIME", "XDG_CONFIG_DIRS", "GEM_HOME", "GEM_PATH", "GEMRC",
    # code or options in a language of their own, run or read at startup
    "PROMPT_COMMAND", "SHELLOPTS", "PS4", "VIMINIT", "EXINIT", "PYTHONWARNINGS", "PYTHONBREAKPOINT",
    "NODE_OPTIONS", "PERL5OPT", "PERL5DB", "RUBYOPT", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    # git's configuration and repository (aliases, hooks, core.pager, core.fsmonitor…; ext:: transport)
    "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT", "GIT_CONFIG", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM",
    "GIT_EXEC_PATH", "GIT_TEMPLATE_DIR", "GIT_DIR", "GIT_COMMON_DIR", "GIT_ALLOW_PROTOCOL",
)  # fmt: skip
# Families of names, refused like ENV_CODE: every variable whose name starts with the text before `*`
# (compared case-insensitively, as npm reads its own). Exported bash functions (`BASH_FUNC_name%%`,
# imported by every bash, in place of the command of that name), npm's, yarn's (`YARN_YARN_PATH`: the
# yarn release it runs) and bundler's configuration (`BUNDLE_GEMFILE`: the Ruby file it evaluates), and
# the keys and values GIT_CONFIG_COUNT counts.
ENV_PATTERNS: tuple[str, ...] = (
    "BASH_FUNC_*", "npm_config_*", "YARN_*", "BUNDLE_*", "GIT_CONFIG_KEY_*", "GIT_CONFIG_VALUE_*",
)  # fmt: skip
CODE_ENV: tuple[str, ...] = ENV_LIBRARIES + ENV_COMMANDS + ENV_CODE + ENV_PATTERNS
_NAMES: frozenset[str] = frozenset(ENV_LIBRARIES + ENV_COMMANDS + ENV_CODE)
_PREFIXES: tuple[tuple[str, str], ...] = tuple((p[:-1].lower(), p) for p in ENV_PATTERNS)
# Judged apart from CODE_ENV. PATH: where the child, and every program it starts by name (git's ssh and
# pager, an editor), finds programs; a directory the run's own PATH did not have is refused (rule
# `exec.path`). GIT_TRACE*: an absolute path (or `af_unix:` socket) git appends its trace to, judged as
# a write of that file by the fs rules.
ENV_SEARCH: tuple[str, ...] = ("PATH",)
ENV_FILES: tuple[str, ...] = ("GIT_TRACE*",)
JUDGED_ENV: tuple[str, ...] = CODE_ENV + ENV_SEARCH + ENV_FILES


def code_env_entry(name: str) -> str | None:
    """The entry of CODE_ENV the variable `name` is judged by (the name, or a pattern of ENV_PATTERNS);
    None when it is none of them."""
    if name in _NAMES:
        return name
    folded = name.lower()
    for prefix, pattern in _PREFIXES:
        if folded.startswith(prefix):
            return pattern
    return None


def code_env(env: Mapping[str, str | None]) -> dict[str, str | None]:
    """The variables of `env` that CODE_ENV covers."""
    return {name: value for name, value in env.items() if code_env_entry(name) is not None}


def judged_env_entry(name: str) -> str | None:
    """The entry of JUDGED_ENV the variable `name` is judged by: CODE_ENV's, PATH, or GIT_TRACE*."""
    if name == "PATH":
        return name
    if name.startswith("GIT_TRACE"):
        return "GIT_TRACE*"
    return code_env_entry(name)


def judged_env(env: Mapping[str, str | None]) -> dict[str, str | None]:
    """The variables of `env` that JUDGED_ENV covers (a run's own values: the `base` of check_exec_env)."""
    return {name: value for name, value in env.items() if judged_env_entry(name) is not None}


# What makes git hand a command line to `sh -c` rather than run it as a program (run-command.c).
_SHELL_SYNTAX: frozenset[str] = frozenset("|&;<>()$`\\\"'*?[#~=%\n")


def check_exec_env(
    rules: ExecRules,
    env: Mapping[str, str],
    base: Mapping[str, str | None],
    *,
    path: Sequence[str] | None = None,
    cwd: str | None = None,
    fs: FsRules | None = None,
) -> Verdict:
    """Whether a child may start with `env` (the environment it gets): a variable of JUDGED_ENV set to a
    value other than `base` (the run's own environment when it opened: the user's EDITOR stays fine)
    and not listed in `rules.env` is judged as the code it makes the child run (rule `exec.env`), the
    directories it adds to PATH (rule `exec.path`) or the file it makes git write (`fs`'s rules, none:
    not judged). An empty value counts for the variables of ENV_CODE and ENV_PATTERNS (`HOME=""` makes
    git read /.gitconfig, Node's os.homedir() the working directory); for a library or a command line
    it names none. Without an exec section nothing is checked: any program may run anyway."""
    if rules.allow_shell and rules.programs is None and not rules.args:
        return ALLOWED
    for name, value in env.items():
        entry = judged_env_entry(name)
        if entry is None or value == base.get(name) or name in rules.env or entry in rules.env:
            continue
        if entry in ENV_LIBRARIES:
            for library in value.replace(":", " ").split():
                verdict = check_exec(rules, library, [library], shell=False, path=(), cwd=cwd)
                if verdict.decision == "BLOCK":
                    return _env_refused(name, f"loads {library} into it; {verdict.reason}")
            continue
        if entry in ENV_COMMANDS:
            if not value.strip():
                continue
            shell = name == "GIT_SSH_COMMAND" or bool(_SHELL_SYNTAX & set(value.strip()))
            words = value.split()
            program, argv = ("/bin/sh", ["sh", "-c", value]) if shell else (words[0], words)
            verdict = check_exec(rules, program, argv, shell=shell, path=path, cwd=cwd)
            if verdict.decision == "BLOCK":
                return _env_refused(name, f"makes it run {value!r:.80}; {verdict.reason}")
            continue
        if entry == "PATH":
            verdict = _check_search_path(value, base.get(name))
        elif entry == "GIT_TRACE*":
            verdict = _check_trace_file(name, value, fs, cwd)
        else:
            verdict = _env_refused(
                name, f"makes it load or run other code (list {entry} in exec.env to allow)"
            )
        if verdict.decision == "BLOCK":
            return verdict
    return ALLOWED


def _check_search_path(value: str, base: str | None) -> Verdict:
    """A child's PATH may keep, drop and reorder the directories of the run's own PATH; a directory it
    did not have (an empty or relative entry: the directory the child starts in) is refused."""
    known = set((base or "").split(os.pathsep)) if base is not None else set()
    for directory in value.split(os.pathsep):
        if directory not in known:
            shown = directory or "(empty: the working directory)"
            return Verdict(
                "BLOCK",
                "exec.path",
                f"PATH set for the child adds {shown!s:.120}, which the run's PATH does not have: a "
                "program of the agent's there would run in place of one an allowed program starts by "
                "name (list PATH in exec.env to allow)",
            )
    return ALLOWED


def _check_trace_file(name: str, value: str, fs: FsRules | None, cwd: str | None) -> Verdict:
    """GIT_TRACE*: 1/2/true (stderr), a descriptor number, false/0 write no file; an absolute path or
    an `af_unix:[stream:|dgram:]PATH` socket is written to."""
    target = value.strip()
    if target.lower().startswith("af_unix:"):
        target = target[len("af_unix:") :]
        for kind in ("stream:", "dgram:"):
            target = target.removeprefix(kind)
    if fs is None or not target.startswith("/"):
        return ALLOWED
    verdict = check_fs(fs, "write", target, cwd=cwd or os.getcwd())
    if verdict.decision == "BLOCK":
        return _env_refused(name, f"makes git write a file: {verdict.reason}")
    return ALLOWED


def _env_refused(name: str, why: str) -> Verdict:
    return Verdict("BLOCK", "exec.env", f"{name} set for the child {why}")
