"""The policy sections the runtime API checks (fs, exec, network's in-process fields, tools): read from
YAML with file:line errors like every other section, shipped as presets, picked up on reload."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from failcore import shipped
from failcore.policy import PolicyError, load_policy, parse_policy
from failcore.policy.contracts import ToolContract
from failcore.policy.runtime import (
    DEFAULT_NET_DENY,
    ExecRules,
    FsRules,
    NetRules,
    check_connect,
    check_exec,
    check_fs,
)
from tests.policy_helpers import assert_problems, problems_of

REPO_ROOT = Path(__file__).resolve().parent.parent

needs_system_git = pytest.mark.skipif(
    not (shutil.which("git") or "").startswith(
        ("/usr/bin/", "/bin/", "/usr/local/bin/", "/opt/homebrew/bin/")
    ),
    reason="needs git in a system bin directory",
)


def test_a_policy_without_the_sections_allows_everything_but_internal_addresses() -> None:
    policy = parse_policy("version: 1\n")
    assert policy.fs == FsRules() and policy.exec == ExecRules() and dict(policy.tools) == {}
    assert policy.network == NetRules() and policy.network.deny == DEFAULT_NET_DENY
    assert set(DEFAULT_NET_DENY) == {"metadata", "link_local", "loopback", "private"}
    assert check_connect(policy.network, None, "169.254.169.254", 80).rule == "net.metadata"
    assert check_exec(policy.exec, "/bin/sh", ["/bin/sh", "-c", "x"], shell=True).decision == "ALLOW"


def test_all_sections_are_read() -> None:
    policy = parse_policy(
        textwrap.dedent("""\
        fs:
          read: [., $python]
          write: ./out
          deny: [~/.ssh, .env]
        exec:
          programs: [git, /usr/bin/ls]
          args:
            git: [status, "diff *"]
        network:
          block_private_resolved: true
          deny: [metadata, link-local]
          allow: [127.0.0.1, 10.0.0.0/8, "*.corp.example", "[::1]"]
          default: block
        tools:
          search: {output: json}
          "summarise text": {output: TEXT}
        """),
        "test.yaml",
    )
    assert (policy.fs.read, policy.fs.write, policy.fs.deny) == (
        (".", "$python"),
        ("./out",),
        ("~/.ssh", ".env"),
    )
    assert policy.exec.programs == ("git", "/usr/bin/ls")
    assert dict(policy.exec.args) == {"git": ("status", "diff *")}
    assert policy.exec.allow_shell is False  # the exec section's default
    assert policy.block_private_resolved is True
    assert policy.network.deny == ("metadata", "link_local")
    assert policy.network.allow == ("127.0.0.1", "10.0.0.0/8", "*.corp.example", "::1")
    assert policy.network.default == "BLOCK"
    assert dict(policy.tools) == {"search": ToolContract("json"), "summarise text": ToolContract("text")}


def test_star_and_empty_lists() -> None:
    policy = parse_policy(
        "fs: {read: '*', write: []}\nexec: {programs: '*', allow_shell: true}\nnetwork: {deny: []}\n"
    )
    assert (policy.fs.read, policy.fs.write) == (("/",), ())
    assert policy.exec.programs is None and policy.exec.allow_shell
    assert check_connect(policy.network, None, "169.254.169.254", 80).decision == "ALLOW"
    assert check_fs(policy.fs, "write", "x", cwd="/tmp").rule == "fs.write_outside_roots"
    # Bare sections mean their defaults.
    assert parse_policy("fs:\nexec:\nnetwork:\n").exec.allow_shell is False


def test_errors_have_positions_and_advice() -> None:
    assert_problems(
        """\
        fs:
          reed: [.]
          write: [$tpm, "src/*", 3]
          deny: "[abc"
        exec:
          allow_shell: yes
          programs: [./git, "git status", true]
          args:
            curl: ["-s*"]
            "*": [x]
        network:
          deny: [metdata]
          allow: ["10.0.0.0/99", "http://x", "*"]
          default: maybe
          block_private: true
        tools:
          search: {output: xml}
          other: {}
          third: json
          fourth: {output: json, schema: x}
        """,
        [
            (2, 3, 'fs: unknown key "reed" in the fs section. Did you mean "read"?'),
            (3, 11, 'fs: write: "$tpm" is not a root failcore knows. Did you mean "$tmp"?'),
            (3, 17, "a root is a directory, not a glob; put globs in 'fs.deny'"),
            (3, 26, "fs: write: expected a directory"),
            (4, 9, "fs: deny: bad glob \"[abc\": the '[' at character 1 is never closed"),
            (6, 16, 'exec: allow_shell: expected true or false, got the text "yes"'),
            (7, 14, "a relative path depends on the working directory"),
            (7, 21, "list the program alone (git) and its arguments under 'exec.args'"),
            (7, 35, 'got the boolean true; put it in quotes: "true"'),
            (9, 5, "exec: args: curl is not in 'exec.programs', so it can never run"),
            (10, 5, "exec: args: argument patterns belong to one program"),
            (
                12,
                10,
                'network: deny: the text "metdata" is not an address category. Did you mean "metadata"?',
            ),
            (13, 11, 'network: allow: "10.0.0.0/99" is not a valid CIDR'),
            (13, 26, 'network: allow: "http://x" looks like a URL'),
            (13, 38, "'*' would allow every address"),
            (14, 12, 'network: default: the text "maybe" is not valid; use ALLOW or BLOCK'),
            (
                15,
                3,
                'unknown key "block_private" in the network section. Did you mean "block_private_resolved"?',
            ),
            (17, 20, 'tools: search: output: the text "xml" is not an output kind'),
            (18, 10, "tools: other: missing required key 'output'"),
            (19, 10, "tools: third: expected a mapping such as '{output: json}'"),
            (20, 26, 'tools: fourth: unknown key "schema" in a tool contract'),
        ],
    )


def test_argument_patterns_for_an_unlisted_program() -> None:
    assert_problems(
        "exec:\n  programs: [git]\n  args:\n    curl: ['-s*']\n    '*': [x]\n",
        [
            (4, 5, "exec: args: curl is not in 'exec.programs', so it can never run"),
            (5, 5, "exec: args: argument patterns belong to one program; write its name (git), not '*'"),
        ],
    )


def test_sections_of_the_wrong_type() -> None:
    assert_problems(
        "fs: [.]\nexec: true\ntools: [a]\nnetwork: 3\n",
        [
            (1, 5, "fs: expected a mapping such as 'write: [.]', got a list"),
            (2, 7, "exec: expected a mapping such as 'allow_shell: false', got the boolean true"),
            (3, 8, "tools: expected a mapping of tool name to contract"),
            (4, 10, "network: expected a mapping"),
        ],
    )


def test_policy_check_reports_runtime_section_mistakes_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nexec:\n  allow_shel: false\n")
    result = subprocess.run(
        [sys.executable, "-m", "failcore.cli", "policy", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert (
        f'{bad}:3:3: exec: unknown key "allow_shel" in the exec section. Did you mean "allow_shell"?'
        in output
    )
    assert "Traceback" not in output


# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fs_safe", "exec_safe", "strict"])
def test_presets_are_shipped_names(name: str) -> None:
    path = shipped.resolve_policy(name)
    assert path == REPO_ROOT / "policies" / f"{name}.yaml"
    assert name in shipped.shipped_policy_names()
    assert load_policy(path).description


def test_fs_safe_blocks_the_issue_example_and_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    fs = load_policy(shipped.resolve_policy("fs_safe")).fs
    cwd = str(work)
    assert check_fs(fs, "write", "../etc/passwd", cwd=cwd).rule == "fs.write_outside_roots"
    assert check_fs(fs, "write", "notes/today.md", cwd=cwd).decision == "ALLOW"
    assert check_fs(fs, "read", "/etc/passwd", cwd=cwd).rule == "fs.read_outside_roots"
    assert check_fs(fs, "read", str(home / ".ssh" / "id_ed25519"), cwd=cwd).rule == "fs.deny_glob"
    for secret in (
        ".env",
        "config/.env.production",
        "certs/server.pem",
        "deploy.key",
        ".git/hooks/pre-commit",
    ):
        assert check_fs(fs, "read", secret, cwd=cwd).rule == "fs.deny_glob", secret
    assert check_fs(fs, "read", "src/app.py", cwd=cwd).decision == "ALLOW"
    assert check_fs(fs, "read", subprocess.__file__, cwd=cwd).decision == "ALLOW"  # imports keep working
    assert check_fs(fs, "write", "/dev/null", cwd=cwd).decision == "ALLOW"  # subprocess.DEVNULL


def test_relative_roots_stay_where_the_policy_was_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fs = load_policy(shipped.resolve_policy("fs_safe")).fs
    assert fs.base == str(tmp_path)
    # The tool moves to / and writes "etc/passwd": "." did not move with it.
    monkeypatch.chdir("/")
    verdict = check_fs(fs, "write", "etc/passwd", cwd="/")
    assert (verdict.decision, verdict.rule) == ("BLOCK", "fs.write_outside_roots")
    assert check_fs(fs, "write", str(tmp_path / "out.txt"), cwd="/").decision == "ALLOW"


@needs_system_git
def test_exec_safe() -> None:
    exec_rules = load_policy(shipped.resolve_policy("exec_safe")).exec
    assert check_exec(exec_rules, "ls", ["ls", "-la"], shell=False).decision == "ALLOW"
    assert check_exec(exec_rules, "git", ["git", "status"], shell=False).decision == "ALLOW"
    assert check_exec(exec_rules, "/bin/sh", ["/bin/sh", "-c", "ls"], shell=True).rule == "exec.shell"
    assert check_exec(exec_rules, "bash", ["bash", "-c", "ls"], shell=False).rule == "exec.shell"
    assert check_exec(exec_rules, "curl", ["curl", "http://x"], shell=False).rule == "exec.program"
    assert check_exec(exec_rules, "python3", ["python3", "-c", "x"], shell=False).rule == "exec.program"
    for argv in (["git", "push"], ["git", "diff", "--output=/tmp/x"], ["git", "-c", "core.pager=id", "log"],
                 ["git", "log", "--oneline", "-n", "5", "--ext-diff"]):  # fmt: skip
        assert check_exec(exec_rules, "git", argv, shell=False).rule == "exec.args", argv


def test_strict_combines_both_presets_and_the_network_defaults() -> None:
    strict = load_policy(shipped.resolve_policy("strict"))
    fs_safe = load_policy(shipped.resolve_policy("fs_safe")).fs
    assert (strict.fs.read, strict.fs.write, strict.fs.deny) == (fs_safe.read, fs_safe.write, fs_safe.deny)
    assert strict.exec == load_policy(shipped.resolve_policy("exec_safe")).exec
    assert set(strict.network.deny) == {"metadata", "link_local", "loopback", "private"}
    assert strict.network.allow == ()
    assert (strict.mode, strict.default, strict.fail_open) == ("enforce", "BLOCK", False)


def test_the_policy_file_in_force_is_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hot reload would apply whatever a guarded tool wrote there: even a policy that lets tools write
    anywhere protects its own file, and the directories above it."""
    monkeypatch.chdir(tmp_path)
    conf = tmp_path / "conf"
    conf.mkdir()
    path = conf / "policy.yaml"
    path.write_text("version: 1\n")
    (tmp_path / "alias").symlink_to(conf)
    fs = load_policy(Path("conf/policy.yaml")).fs
    cwd = str(tmp_path)
    for op, target in [("write", "conf/policy.yaml"), ("write", "alias/policy.yaml"), ("delete", str(path)),
                       ("rename", "conf"), ("delete", "."), ("chmod", "conf/./policy.yaml")]:  # fmt: skip
        verdict = check_fs(fs, op, target, cwd=cwd)
        assert (verdict.decision, verdict.rule) == ("BLOCK", "fs.policy_file"), (op, target)
    assert check_fs(fs, "read", "conf/policy.yaml", cwd=cwd).decision == "ALLOW"
    assert check_fs(fs, "write", "conf/other.yaml", cwd=cwd).decision == "ALLOW"
    assert check_fs(fs, "write", "policy.yaml", cwd=cwd).decision == "ALLOW"


# --------------------------------------------------------------------------------------------------
# Reload
# --------------------------------------------------------------------------------------------------


def test_an_edited_policy_file_yields_the_new_sections(tmp_path: Path) -> None:
    """The proxy's gate and the runtime both reload by calling load_policy again on a changed file."""
    path = tmp_path / "p.yaml"
    path.write_text("fs: {write: [.]}\n")
    first = load_policy(path)
    path.write_text("fs: {write: [./out]}\nexec: {allow_shell: true}\ntools: {t: {output: text}}\n")
    second = load_policy(path)
    assert (first.fs.write, second.fs.write) == ((".",), ("./out",))
    assert second.exec.allow_shell and dict(second.tools) == {"t": ToolContract("text")}
    assert first.sha256 != second.sha256
    path.write_text("fs: {write: [.]}\nexec:\n  allow_shell: maybe\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(f"{path}:3:16: exec: allow_shell: expected true or false")


def test_exec_env_and_system_resolvers_are_read_and_checked() -> None:
    policy = parse_policy(
        "version: 1\nexec:\n  programs: [git]\n  env: [GIT_EXTERNAL_DIFF, LD_PRELOAD]\n"
        "network:\n  system_resolvers: false\n"
    )
    assert policy.exec.env == ("GIT_EXTERNAL_DIFF", "LD_PRELOAD")
    assert policy.network.system_resolvers is False
    assert parse_policy("version: 1\n").network.system_resolvers is True
    found = problems_of("version: 1\nexec:\n  env: [LD_PRELAOD]\n")
    assert len(found) == 1 and 'Did you mean "LD_PRELOAD"?' in found[0][2], found
