"""The runtime API's check of git's own command line (rule `exec.git_args`): what git's environment
can make it do (failcore.policy.runtime_env), its arguments can too, and `programs: [git]` admits any.

- Configuration: `git -c KEY=VALUE` and `--config-env=KEY=VAR` (git hands them to its children as
  GIT_CONFIG_PARAMETERS), and `git clone -c/--config` (written into the new repository before its
  checkout). Keys run code (`alias.x=!cmd`, `core.sshCommand`, `core.pager`, `core.editor`,
  `core.fsmonitor`, `core.hooksPath`, `diff.external`, `filter.*.smudge`, `credential.helper`,
  `gpg.program`, `protocol.ext.allow`, `include.path`…): any key but the data-only ones of SAFE_KEYS
  is refused unless GIT_CONFIG_PARAMETERS is listed in exec.env.
- Where git finds its programs, repository and hooks: `--exec-path=DIR` (GIT_EXEC_PATH), `--git-dir`
  (GIT_DIR), `clone`/`init --template` (GIT_TEMPLATE_DIR): refused unless that name is in exec.env.
- Command lines a subcommand hands to a shell (`--upload-pack`/`--exec`, `--receive-pack`/`--exec`, `rebase
  --exec`, `grep -O`, `difftool --extcmd`, `filter-branch --*-filter`/`--setup`, `submodule foreach`,
  `bisect run`): judged as `sh -c CMD` (refused unless exec.allow_shell).

A subcommand's long options are taken by any prefix, as git's parse-options does (`--upload=`), and a
short one inside a cluster of them (`-ix CMD`).
"""

from __future__ import annotations

from collections.abc import Sequence

from failcore.policy.runtime import ALLOWED, ExecRules, Verdict, check_exec, program_name

# Configuration keys that hold data only (names, colours, formats), let through `-c`.
SAFE_KEYS: frozenset[str] = frozenset(
    {"user.name", "user.email", "author.name", "author.email", "committer.name", "committer.email",
     "core.quotepath", "core.autocrlf", "core.safecrlf", "core.eol", "core.abbrev", "core.filemode",
     "core.ignorecase", "core.precomposeunicode", "init.defaultbranch", "column.ui", "log.date",
     "log.decorate", "pull.rebase", "pull.ff", "push.default", "fetch.prune", "gc.auto",
     "maintenance.auto", "commit.gpgsign", "tag.gpgsign", "diff.renames", "merge.conflictstyle",
     "i18n.commitencoding", "i18n.logoutputencoding", "protocol.version"}
)  # fmt: skip
SAFE_SECTIONS: tuple[str, ...] = ("color.", "advice.")

# git's global options that take the next word as their value (git.c handle_options): one missing here
# would have its value read as the subcommand, and the global options after it (`-c`) go unjudged.
_GLOBAL_VALUE = frozenset(
    {"-C", "-c", "--git-dir", "--work-tree", "--namespace", "--config-env", "--super-prefix",
     "--shallow-file", "--attr-source"}
)  # fmt: skip
# A subcommand's options that take a configuration, a directory or a command line.
_CONFIG: dict[str, tuple[str, ...]] = {"clone": ("-c", "--config")}
_TEMPLATE: dict[str, tuple[str, ...]] = {"clone": ("--template",), "init": ("--template",)}
_COMMAND: dict[str, tuple[str, ...]] = {
    "clone": ("-u", "--upload-pack"),
    "fetch": ("--upload-pack",),
    "fetch-pack": ("--upload-pack", "--exec"),
    "pull": ("--upload-pack",),
    "ls-remote": ("--upload-pack", "--exec"),
    "push": ("--receive-pack", "--exec"),
    "send-pack": ("--receive-pack", "--exec"),
    "archive": ("--exec",),
    "rebase": ("-x", "--exec"),
    "difftool": ("-x", "--extcmd"),
    "grep": ("-O", "--open-files-in-pager"),
    # (git's filter-branch script evals each filter in a shell.)
    "filter-branch": (
        "--env-filter", "--tree-filter", "--index-filter", "--parent-filter", "--msg-filter",
        "--commit-filter", "--tag-name-filter", "--setup",
    ),
}  # fmt: skip
# Options whose value must be attached (`-Ocmd`, `--open-files-in-pager=cmd`): alone, they take none.
_ATTACHED_ONLY = frozenset({"-O", "--open-files-in-pager"})
# Subcommands whose words after this one are a command line (`submodule foreach CMD`, `bisect run CMD`).
_RUNS_REST: dict[str, str] = {"submodule": "foreach", "bisect": "run"}


def check_git_args(
    rules: ExecRules,
    program: str,
    argv: Sequence[str],
    *,
    path: Sequence[str] | None = None,
    cwd: str | None = None,
) -> Verdict:
    """Whether git may run with `argv` (argv[0] included). Anything but git, and a policy without an
    exec section, is let through."""
    if (rules.allow_shell and rules.programs is None and not rules.args) or program_name(program) != "git":
        return ALLOWED
    for kind, what, value in git_settings(argv):
        if kind == "command":
            verdict = check_exec(rules, "/bin/sh", ["sh", "-c", value], shell=True, path=path, cwd=cwd)
            if verdict.decision == "BLOCK":
                return _refused(f"git {what} makes it run {value!r:.80}; {verdict.reason}")
        elif kind == "config":
            key = value.split("=", 1)[0].strip().lower()
            if key in SAFE_KEYS or key.startswith(SAFE_SECTIONS) or "GIT_CONFIG_PARAMETERS" in rules.env:
                continue
            return _refused(
                f"git {what} {key}: configuration given to git can make it run other code "
                "(list GIT_CONFIG_PARAMETERS in exec.env to allow)"
            )
        elif kind not in rules.env:  # a variable of runtime_env.ENV_CODE: GIT_EXEC_PATH, GIT_DIR, …
            return _refused(
                f"git {what} {value!r:.80}: where git finds its programs, repository or hooks "
                f"(list {kind} in exec.env to allow)"
            )
    return ALLOWED


def git_settings(argv: Sequence[str]) -> list[tuple[str, str, str]]:
    """(kind, option, value) of what git's command line sets: kind is "config" (value KEY=VALUE),
    "command" (a command line) or the environment variable the option stands for."""
    found: list[tuple[str, str, str]] = []
    words = list(argv[1:])
    i = 0
    while i < len(words):  # global options, up to the subcommand
        word = words[i]
        if not word.startswith("-") or word == "--":
            break
        name, eq, attached = word.partition("=")
        value = attached if eq else (words[i + 1] if name in _GLOBAL_VALUE and i + 1 < len(words) else "")
        if name in _GLOBAL_VALUE and not eq:
            i += 1
        if name == "-c" or name == "--config-env":
            found.append(("config", name, value))
        elif name == "--exec-path" and eq:
            found.append(("GIT_EXEC_PATH", name, value))
        elif name == "--git-dir":
            found.append(("GIT_DIR", name, value))
        elif word.startswith("-c") and word != "-c":  # not git's syntax (it refuses it): judged anyway
            found.append(("config", "-c", word[2:]))
        i += 1
    if i >= len(words):
        return found
    subcommand, rest = words[i], words[i + 1 :]
    options: list[tuple[str, tuple[str, ...]]] = [
        ("config", _CONFIG.get(subcommand, ())),
        ("GIT_TEMPLATE_DIR", _TEMPLATE.get(subcommand, ())),
        ("command", _COMMAND.get(subcommand, ())),
    ]
    j = 0
    while j < len(rest):
        word = rest[j]
        if word in ("--", "--end-of-options"):
            break
        if subcommand in _RUNS_REST and word == _RUNS_REST[subcommand]:
            found.append(("command", f"{subcommand} {word}", " ".join(rest[j + 1 :])))
            break
        for kind, names in options:
            hit = _option_value(word, rest[j + 1] if j + 1 < len(rest) else None, names)
            if hit is not None:
                option, value, used_next = hit
                found.append((kind, f"{subcommand} {option}", value))
                j += used_next
                break
        j += 1
    return found


def _option_value(word: str, following: str | None, names: tuple[str, ...]) -> tuple[str, str, int] | None:
    """(option, value, 1 when the value is the next word) when `word` gives one of `names`."""
    if word.startswith("--"):
        given, eq, attached = word.partition("=")
        for name in names:
            if name.startswith("--") and len(given) > 2 and name.startswith(given):
                if eq:
                    return name, attached, 0
                if name in _ATTACHED_ONLY or following is None:
                    return None
                return name, following, 1
        return None
    if not word.startswith("-") or len(word) < 2:
        return None
    for name in names:  # a short option anywhere in a cluster takes the rest of the word or the next one
        if len(name) == 2 and name[1] in word[1:]:
            rest = word[word.index(name[1], 1) + 1 :]
            if rest:
                return name, rest, 0
            if name in _ATTACHED_ONLY or following is None:
                return None
            return name, following, 1
    return None


def _refused(reason: str) -> Verdict:
    return Verdict("BLOCK", "exec.git_args", reason)
