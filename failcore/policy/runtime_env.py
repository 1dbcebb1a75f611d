"""The runtime API's check of a child's environment (`exec.env`): variables that make an allowed program
run code the agent chose, judged with the exec rules of `failcore.policy.runtime`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from failcore.policy.runtime import ALLOWED, ExecRules, Verdict, check_exec

# Environment variables that make an allowed program run other code. A library loaded into every child
# process (LD_PRELOAD…): each file is judged as a program the spawn runs. A command line the program runs
# (git's pager, editor, diff and ssh, less's preprocessor…): judged as a spawn of it (through a shell
# when it holds shell syntax, as git runs it). Anything else (a library or module search path, a startup
# file a shell or interpreter runs, interpreter options, git configuration or repository): refused.
ENV_LIBRARIES: tuple[str, ...] = ("LD_PRELOAD", "LD_AUDIT", "DYLD_INSERT_LIBRARIES")
ENV_COMMANDS: tuple[str, ...] = (
    "GIT_EXTERNAL_DIFF", "GIT_SSH_COMMAND", "GIT_SSH", "GIT_EDITOR", "GIT_SEQUENCE_EDITOR", "GIT_PAGER",
    "GIT_ASKPASS", "SSH_ASKPASS", "SUDO_ASKPASS", "GIT_PROXY_COMMAND", "EDITOR", "VISUAL", "PAGER",
    "MANPAGER", "SYSTEMD_PAGER", "LESSOPEN", "LESSCLOSE", "BROWSER",
)  # fmt: skip
ENV_CODE: tuple[str, ...] = (
    "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH", "DYLD_FRAMEWORK_PATH", "GCONV_PATH", "BASH_ENV", "ENV",
    "PROMPT_COMMAND", "ZDOTDIR", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
    "NODE_OPTIONS", "NODE_PATH", "PERL5OPT", "PERL5LIB", "PERLLIB", "RUBYOPT", "RUBYLIB",
    "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT",
    "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "GIT_EXEC_PATH", "GIT_TEMPLATE_DIR", "GIT_DIR",
)  # fmt: skip
CODE_ENV: tuple[str, ...] = ENV_LIBRARIES + ENV_COMMANDS + ENV_CODE
# What makes git hand a command line to `sh -c` rather than run it as a program (run-command.c).
_SHELL_SYNTAX: frozenset[str] = frozenset("|&;<>()$`\\\"'*?[#~=%\n")


def check_exec_env(
    rules: ExecRules,
    env: Mapping[str, str],
    base: Mapping[str, str | None],
    *,
    path: Sequence[str] | None = None,
    cwd: str | None = None,
) -> Verdict:
    """Whether a child may start with `env` (the environment it gets): a variable of CODE_ENV set to a
    value other than `base` (the run's own environment when it opened: the user's EDITOR stays fine)
    and not listed in `rules.env` is judged as the code it makes the child run (rule `exec.env`).
    Without an exec section nothing is checked: any program may run anyway."""
    if rules.allow_shell and rules.programs is None and not rules.args:
        return ALLOWED
    for name in CODE_ENV:
        value = env.get(name)
        if not value or value == base.get(name) or name in rules.env:
            continue
        if name in ENV_LIBRARIES:
            for library in value.replace(":", " ").split():
                verdict = check_exec(rules, library, [library], shell=False, path=(), cwd=cwd)
                if verdict.decision == "BLOCK":
                    return _env_refused(name, f"loads {library} into it; {verdict.reason}")
            continue
        if name in ENV_COMMANDS:
            shell = name == "GIT_SSH_COMMAND" or bool(_SHELL_SYNTAX & set(value.strip()))
            words = value.split()
            program, argv = ("/bin/sh", ["sh", "-c", value]) if shell else (words[0], words)
            verdict = check_exec(rules, program, argv, shell=shell, path=path, cwd=cwd)
            if verdict.decision == "BLOCK":
                return _env_refused(name, f"makes it run {value!r:.80}; {verdict.reason}")
            continue
        return _env_refused(name, "makes it load or run other code (list the name in exec.env to allow)")
    return ALLOWED


def _env_refused(name: str, why: str) -> Verdict:
    return Verdict("BLOCK", "exec.env", f"{name} set for the child {why}")
