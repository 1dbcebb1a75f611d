"""The runtime API's policy checks (failcore.policy.runtime), tried as an agent would attack them.

Expected verdicts come from outside the code under test: for files, where the kernel really puts a file
written through each path spelling (its inode, found by walking the directories); for addresses, what
libc's resolver makes of each spelling (getaddrinfo with AI_NUMERICHOST, inet_aton) judged with Python's
ipaddress properties and the cloud providers' documented metadata addresses; for shells, /etc/shells.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

from failcore.policy.contracts import ToolContract, check_output
from failcore.policy.runtime import (
    ExecRules,
    FsRules,
    NetRules,
    Verdict,
    check_connect,
    check_exec,
    check_fs,
)

needs_system_git = pytest.mark.skipif(
    not (shutil.which("git") or "").startswith(
        ("/usr/bin/", "/bin/", "/usr/local/bin/", "/opt/homebrew/bin/")
    ),
    reason="needs git in a system bin directory",
)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/work (the root and cwd), tmp/work-evil (a sibling sharing the prefix), tmp/outside."""
    work = tmp_path / "work"
    (work / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "work-evil").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("s")
    (work / "inside.txt").write_text("i")
    # Symlinks an agent could plant (or find) inside its root.
    (work / "link_out").symlink_to(outside)  # absolute, to a directory outside
    (work / "rel_out").symlink_to("../outside")  # relative, to outside
    (work / "dangling").symlink_to(outside / "not-yet.txt")  # dangling, to a file outside
    (work / "dangling_dir").symlink_to(outside / "newdir")  # dangling, to a dir outside
    (work / "chain1").symlink_to("chain2")  # inside -> inside -> outside
    (work / "chain2").symlink_to(outside)
    (work / "link_in").symlink_to(work / "sub")  # stays inside
    (work / "sub" / "up").symlink_to("../..")  # points at tmp_path: a symlinked parent
    (work / "loop").symlink_to("loop")
    return work


def _inodes(directory: Path) -> set[int]:
    return {p.lstat().st_ino for p in directory.rglob("*")} | {directory.lstat().st_ino}


def _lands_inside(work: Path, spelling: str) -> bool | None:
    """Create a file through `spelling` (relative to work) and report whether the kernel put it inside
    work; None when the kernel refuses the path."""
    before = os.getcwd()
    os.chdir(work)
    try:
        fd = os.open(spelling, os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError:
        return None
    finally:
        os.chdir(before)
    try:
        inode = os.fstat(fd).st_ino
    finally:
        os.close(fd)
    return inode in _inodes(work)


WRITE_SPELLINGS = [
    "new.txt",
    "sub/new.txt",
    "./sub/../new2.txt",
    "sub/deep/../../new3.txt",
    "../outside/x.txt",
    "../../x-escape.txt",
    "sub/../../outside/y.txt",
    "sub//..//..//outside//z.txt",
    "../work-evil/x.txt",
    "../work/../outside/w.txt",
    "link_out/a.txt",
    "link_out/../b.txt",  # '..' after a symlink goes up from where the link points, as the kernel does
    "rel_out/c.txt",
    "dangling",
    "chain1/e.txt",
    "link_in/f.txt",
    "link_in/../g.txt",
    "sub/up/outside/h.txt",
    "sub/up/work/i.txt",
    "sub/up/work-evil/j.txt",
    "/proc/self/root{tmp}/outside/k.txt",
    "/proc/self/cwd/../outside/l.txt",
    "/proc/self/cwd/m.txt",
    "/proc/self/cwd/link_out/n.txt",
    "{tmp}/work/o.txt",
    "{tmp}/work-evil/p.txt",
    "{tmp}/./work/../outside/q.txt",
]


@pytest.mark.parametrize("spelling", WRITE_SPELLINGS)
def test_write_verdict_matches_where_the_kernel_puts_the_file(
    tree: Path, spelling: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tree)  # as the runtime asks: cwd is the process's working directory
    if spelling.startswith("/proc/") and not Path("/proc/self/root").exists():
        pytest.skip("no /proc")
    path = spelling.format(tmp=tree.parent)
    rules = FsRules(read=(".",), write=(".",))
    verdict = check_fs(rules, "write", path, cwd=str(tree))
    inside = _lands_inside(tree, path)
    assert inside is not None, "every spelling here is one the kernel accepts"
    assert verdict.decision == ("ALLOW" if inside else "BLOCK"), (path, verdict)
    if not inside:
        assert verdict.rule == "fs.write_outside_roots"


def test_traversal_from_the_issue_is_blocked(tree: Path) -> None:
    rules = FsRules(read=(".",), write=(".",))
    for path in ("../etc/passwd", "../../etc/passwd", "../../../../../../../../etc/passwd", "/etc/passwd"):
        verdict = check_fs(rules, "write", path, cwd=str(tree))
        assert (verdict.decision, verdict.rule) == ("BLOCK", "fs.write_outside_roots"), path
        assert "passwd" in (verdict.reason or "")


def test_reading_through_escaping_symlinks_is_blocked(tree: Path) -> None:
    rules = FsRules(read=(".",), write=(".",))
    for path in (
        "link_out/secret.txt",
        "rel_out/secret.txt",
        "chain1/secret.txt",
        "sub/up/outside/secret.txt",
    ):
        verdict = check_fs(rules, "read", path, cwd=str(tree))
        assert (verdict.decision, verdict.rule) == ("BLOCK", "fs.read_outside_roots"), path
    assert check_fs(rules, "read", "link_in/../inside.txt", cwd=str(tree)).decision == "ALLOW"


def test_paths_the_kernel_refuses_are_judged_by_where_they_point(tree: Path) -> None:
    rules = FsRules(read=(".",), write=(".",))
    # A symlink loop (ELOOP) and '..' through a dangling directory link (ENOENT) fail today, but the
    # agent may complete the link before the call: judged as the escape they spell.
    assert check_fs(rules, "write", "loop/../../outside/x", cwd=str(tree)).decision == "BLOCK"
    assert check_fs(rules, "write", "dangling_dir/../d.txt", cwd=str(tree)).decision == "BLOCK"
    assert check_fs(rules, "write", "dangling_dir/e.txt", cwd=str(tree)).decision == "BLOCK"


def test_containment_is_by_path_components_not_string_prefix(tree: Path) -> None:
    rules = FsRules(read=(str(tree),), write=(str(tree),))
    assert check_fs(rules, "write", str(tree) + "-evil/x", cwd="/").decision == "BLOCK"
    assert check_fs(rules, "write", str(tree) + "/x", cwd="/").decision == "ALLOW"
    assert check_fs(rules, "write", str(tree), cwd="/").decision == "ALLOW"


def test_trailing_slashes_and_dots_change_nothing(tree: Path) -> None:
    rules = FsRules(read=(".",), write=("./sub/",))
    assert check_fs(rules, "mkdir", "sub/new/", cwd=str(tree)).decision == "ALLOW"
    assert check_fs(rules, "mkdir", "sub/./new//", cwd=str(tree)).decision == "ALLOW"
    assert check_fs(rules, "mkdir", "sub/../new/", cwd=str(tree)).decision == "BLOCK"
    assert check_fs(rules, "write", "./", cwd=str(tree)).decision == "BLOCK"


def test_a_root_that_is_a_symlink_is_the_directory_it_names(tree: Path) -> None:
    alias = tree.parent / "alias"
    alias.symlink_to(tree)
    rules = FsRules(read=(str(alias),), write=(str(alias),))
    assert check_fs(rules, "write", str(tree / "x"), cwd="/").decision == "ALLOW"
    assert check_fs(rules, "write", str(alias / "x"), cwd="/").decision == "ALLOW"
    assert check_fs(rules, "write", str(alias / "link_out" / "x"), cwd="/").decision == "BLOCK"


def test_a_root_the_agent_turns_into_a_symlink_keeps_its_first_meaning(tree: Path) -> None:
    rules = FsRules(read=(".",), write=("./sandbox",))
    cwd = str(tree)
    # The sandbox does not exist yet; the agent creates it as a symlink to a directory outside.
    assert check_fs(rules, "symlink", "sandbox", cwd=cwd).decision == "ALLOW"
    (tree / "sandbox").symlink_to(tree.parent / "outside")
    verdict = check_fs(rules, "write", "sandbox/x.txt", cwd=cwd)
    assert (verdict.decision, verdict.rule) == ("BLOCK", "fs.write_outside_roots")


def test_every_op_but_reading_needs_a_write_root(tree: Path) -> None:
    rules = FsRules(read=("/",), write=("./sub",))
    for op in ("write", "delete", "rename", "mkdir", "chmod", "symlink", "truncate", "some-new-op"):
        verdict = check_fs(rules, op, "inside.txt", cwd=str(tree))
        assert (verdict.decision, verdict.rule) == ("BLOCK", "fs.write_outside_roots"), op
        assert check_fs(rules, op, "sub/x", cwd=str(tree)).decision == "ALLOW", op
    assert check_fs(rules, "read", "inside.txt", cwd=str(tree)).decision == "ALLOW"
    # A write root can be read.
    assert check_fs(FsRules(read=(), write=("./sub",)), "read", "sub/x", cwd=str(tree)).decision == "ALLOW"


def test_nul_bytes_and_bytes_paths(tree: Path) -> None:
    rules = FsRules(read=(".",), write=(".",))
    verdict = check_fs(rules, "write", "ok.txt\x00/../../etc/passwd", cwd=str(tree))
    assert (verdict.decision, verdict.rule) == ("BLOCK", "fs.bad_path")
    assert check_fs(rules, "write", b"../outside/x", cwd=str(tree)).decision == "BLOCK"  # type: ignore[arg-type]
    assert check_fs(rules, "write", b"sub/\xff.txt", cwd=str(tree)).decision == "ALLOW"  # type: ignore[arg-type]


def test_a_tilde_in_a_path_is_a_directory_name_not_home(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tree.parent / "outside"))
    rules = FsRules(read=(".",), write=(".",))
    assert check_fs(rules, "write", "~/x", cwd=str(tree)).decision == "ALLOW"  # open("~/x") is ./~/x


def test_deny_globs(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tree.parent / "home"
    (home / "keys").mkdir(parents=True)
    (home / "keys" / "id_rsa").write_text("k")
    (home / ".ssh").symlink_to(home / "keys")  # ~/.ssh is itself a symlink
    monkeypatch.setenv("HOME", str(home))
    (tree / "to_key").symlink_to(home / ".ssh" / "id_rsa")
    rules = FsRules(read=("/",), write=("/",), deny=("~/.ssh", ".env", "*.pem", ".git/hooks"))

    def rule(path: str) -> str | None:
        return check_fs(rules, "read", path, cwd=str(tree)).rule

    assert rule(str(home / ".ssh" / "id_rsa")) == "fs.deny_glob"
    assert rule(str(home / "keys" / "id_rsa")) == "fs.deny_glob"  # the directory ~/.ssh really is
    assert rule("to_key") == "fs.deny_glob"  # a symlink to it
    assert rule(str(home / ".ssh")) == "fs.deny_glob"  # listing the directory itself
    assert rule(".env") == "fs.deny_glob"
    assert rule(".ENV") == "fs.deny_glob"  # case-insensitive (macOS, Windows file systems)
    assert rule("sub/deep/.Env") == "fs.deny_glob"
    assert rule("sub/server.PEM") == "fs.deny_glob"
    assert rule("sub/.git/hooks/pre-commit") == "fs.deny_glob"
    assert rule(".environment") is None
    assert rule("sub/pem") is None
    assert rule(".git/config") is None


def test_python_and_tmp_roots(tree: Path) -> None:
    import tempfile

    rules = FsRules(read=(".", "$python"), write=("$tmp",))
    assert check_fs(rules, "read", os.__file__, cwd=str(tree)).decision == "ALLOW"
    assert check_fs(rules, "read", pytest.__file__, cwd=str(tree)).decision == "ALLOW"  # site-packages
    assert (
        check_fs(rules, "write", os.path.join(tempfile.gettempdir(), "x"), cwd=str(tree)).decision == "ALLOW"
    )
    assert check_fs(rules, "read", "/etc/passwd", cwd=str(tree)).decision == "BLOCK"


def test_default_rules_allow_every_file(tree: Path) -> None:
    assert check_fs(FsRules(), "write", "/etc/passwd", cwd=str(tree)) == Verdict("ALLOW", None, None)


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------

NO_SHELL = ExecRules(allow_shell=False)


def _etc_shells() -> list[str]:
    try:
        lines = Path("/etc/shells").read_text().splitlines()
    except OSError:
        return ["/bin/sh", "/bin/bash"]
    return [line.strip() for line in lines if line.strip().startswith("/")]


@pytest.mark.parametrize("shell", _etc_shells())
def test_every_shell_this_system_lists_is_refused(shell: str) -> None:
    for argv in ([shell, "-c", "id"], [shell], [shell, "script.sh"], [os.path.basename(shell), "-lc", "id"]):
        verdict = check_exec(NO_SHELL, argv[0], argv, shell=False)
        assert (verdict.decision, verdict.rule) == ("BLOCK", "exec.shell"), argv


@pytest.mark.parametrize(
    "argv",
    [
        ["/usr/bin/env", "bash", "-c", "id"],
        ["env", "-i", "PATH=/bin", "sh", "-c", "id"],
        ["nohup", "sh", "-c", "id"],
        ["timeout", "5", "bash", "-c", "id"],
        ["xargs", "sh", "-c", "id"],
        ["find", ".", "-exec", "sh", "-c", "id", ";"],
        ["busybox", "sh", "-c", "id"],
        ["sudo", "-u", "root", "/bin/zsh", "-c", "id"],
        ["/bin/bash5.2", "-c", "id"],
        ["C:\\Windows\\System32\\cmd.exe", "/c", "dir"],
        ["pwsh", "-Command", "id"],
        ["env", "-S", "sh -c id"],
        ["env", "--split-string=bash -c id"],
        ["su", "-c", "id"],
        ["watch", "id"],
        ["script", "-qc", "id", "/dev/null"],
        ["flock", "/tmp/l", "-c", "id"],
        ["ssh", "host", "id"],
        ["sudo", "-s"],
        ["sudo", "-i", "id"],
        ["doas", "--", "ash", "-c", "id"],
        ["nice", "-n", "5", "xargs", "-0", "dash"],
    ],
)
def test_shells_behind_wrappers_are_refused(argv: list[str]) -> None:
    program = argv[0].replace("\\", "/")
    verdict = check_exec(NO_SHELL, program, argv, shell=False)
    assert (verdict.decision, verdict.rule) == ("BLOCK", "exec.shell")
    assert "id" not in (verdict.reason or "").split()  # the command line is not repeated


def test_os_system_and_shell_true_are_refused_unless_allowed() -> None:
    verdict = check_exec(NO_SHELL, "/bin/sh", ["/bin/sh", "-c", "ls"], shell=True)
    assert verdict.rule == "exec.shell"
    assert check_exec(NO_SHELL, "ls", ["ls"], shell=True).rule == "exec.shell"
    allowed = ExecRules(allow_shell=True)
    assert check_exec(allowed, "/bin/sh", ["/bin/sh", "-c", "ls"], shell=True).decision == "ALLOW"
    listed = ExecRules(programs=("git",), allow_shell=True)
    assert check_exec(listed, "/bin/sh", ["/bin/sh", "-c", "ls"], shell=True).decision == "ALLOW"


def test_a_word_sh_among_arguments_is_not_a_shell() -> None:
    assert check_exec(NO_SHELL, "git", ["git", "commit", "-m", "sh"], shell=False).decision == "ALLOW"
    assert check_exec(NO_SHELL, "grep", ["grep", "-r", "bash", "."], shell=False).decision == "ALLOW"
    assert check_exec(NO_SHELL, "find", ["find", ".", "-name", "at"], shell=False).decision == "ALLOW"
    assert check_exec(NO_SHELL, "env", ["env", "FOO=sh", "ls"], shell=False).decision == "ALLOW"


@needs_system_git
def test_programs_by_name_only_from_system_directories(tmp_path: Path) -> None:
    rules = ExecRules(programs=("git", sys.executable), allow_shell=False)
    assert check_exec(rules, "git", ["git", "status"], shell=False).decision == "ALLOW"
    assert check_exec(rules, "/usr/bin/git", ["git", "status"], shell=False).decision == "ALLOW"
    # A file named git that the agent wrote is not git.
    for program in ("./git", str(tmp_path / "git"), "bin/git", "/home/agent/git"):
        verdict = check_exec(rules, program, [program], shell=False)
        assert (verdict.decision, verdict.rule) == ("BLOCK", "exec.program"), program
    assert check_exec(rules, "curl", ["curl", "http://x"], shell=False).rule == "exec.program"
    # An absolute path entry matches the same file through a symlink.
    alias = tmp_path / "py"
    alias.symlink_to(os.path.realpath(sys.executable))
    assert check_exec(rules, str(alias), [str(alias)], shell=False).decision == "ALLOW"


def test_a_bare_name_is_the_program_path_finds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent writes its own `git` and puts its directory first on PATH."""
    rules = ExecRules(programs=("git", "ls"), allow_shell=False)
    assert check_exec(rules, "ls", ["ls"], shell=False).decision == "ALLOW"
    fake = tmp_path / "ls"
    fake.write_text("#!/bin/sh\nid\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ.get('PATH', '')}")
    verdict = check_exec(rules, "ls", ["ls"], shell=False)
    assert (verdict.decision, verdict.rule) == ("BLOCK", "exec.program")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert check_exec(rules, "ls", ["ls"], shell=False).rule == "exec.program"  # found nowhere: not ls


def test_a_bare_name_is_judged_on_the_childs_path_from_its_cwd(tmp_path: Path) -> None:
    """The spawn's own search path and working directory decide which file runs, not this process's."""
    rules = ExecRules(programs=("ls",), allow_shell=False)
    system = os.path.dirname(shutil.which("ls") or "/usr/bin/ls")
    fake = tmp_path / "bin" / "ls"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nid\n")
    fake.chmod(0o755)
    for path, cwd in (((str(fake.parent),), None), (("bin",), str(tmp_path)), (("",), str(fake.parent))):
        verdict = check_exec(rules, "ls", ["ls"], shell=False, path=path, cwd=cwd)
        assert (verdict.decision, verdict.rule) == ("BLOCK", "exec.program"), (path, cwd)
        assert str(fake) in (verdict.reason or "")
    # A relative program name with '/' is the file under the child's cwd.
    assert check_exec(rules, "bin/ls", ["ls"], shell=False, cwd=str(tmp_path)).rule == "exec.program"
    assert check_exec(rules, "ls", ["ls"], shell=False, path=(system, str(fake.parent))).decision == "ALLOW"
    assert check_exec(rules, "ls", ["ls"], shell=False, path=()).rule == "exec.program"  # found nowhere


@needs_system_git
def test_argument_patterns() -> None:
    rules = ExecRules(
        programs=("git", "ls"), args={"git": ("status", "log --oneline -n ?")}, allow_shell=False
    )
    assert check_exec(rules, "git", ["git", "status"], shell=False).decision == "ALLOW"
    assert check_exec(rules, "git", ["git", "log", "--oneline", "-n", "5"], shell=False).decision == "ALLOW"
    for argv in (["git", "push"], ["git", "status", "--porcelain"], ["git", "-c", "core.pager=sh", "status"],
                 ["git", "log", "--oneline", "-n", "5 --output=/etc/x"], ["git"]):  # fmt: skip
        verdict = check_exec(rules, "git", argv, shell=False)
        assert (verdict.decision, verdict.rule) == ("BLOCK", "exec.args"), argv
    assert check_exec(rules, "ls", ["ls", "-la", "/"], shell=False).decision == "ALLOW"


def test_default_rules_allow_every_process() -> None:
    assert check_exec(ExecRules(), "/bin/sh", ["/bin/sh", "-c", "id"], shell=True).decision == "ALLOW"


# --------------------------------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------------------------------

# Instance metadata endpoints as the providers document them:
# AWS IMDS 169.254.169.254 and fd00:ec2::254 (docs.aws.amazon.com, "Access instance metadata"), ECS task
# metadata/credentials 169.254.170.2; GCP metadata.google.internal = 169.254.169.254 (cloud.google.com,
# "About VM metadata"); Azure IMDS 169.254.169.254 (learn.microsoft.com, "Azure Instance Metadata
# Service"); Alibaba Cloud 100.100.100.200 (alibabacloud.com, "Instance metadata").
DOCUMENTED_METADATA = ["169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200"]


def _resolver_says(spelling: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """What libc connects to for a numeric host spelling."""
    *_, sockaddr = socket.getaddrinfo(spelling, 80, proto=socket.IPPROTO_TCP, flags=socket.AI_NUMERICHOST)[0]
    return ipaddress.ip_address(sockaddr[0].split("%")[0])


def _expected_category(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Independently of failcore: unwrap IPv4 inside IPv6 with the ipaddress module, then judge."""
    inner: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        packed = ip.packed
        if ip.ipv4_mapped:
            inner.append(ip.ipv4_mapped)
        if ip in ipaddress.ip_network("64:ff9b::/96") or ip in ipaddress.ip_network("::/96"):
            inner.append(ipaddress.IPv4Address(packed[12:]))
        if ip.sixtofour:
            inner.append(ip.sixtofour)
        if ip.teredo:
            inner.extend(ip.teredo)
    documented = {ipaddress.ip_address(a) for a in DOCUMENTED_METADATA}
    if any(a in documented for a in inner):
        return "metadata"
    if any(a.is_link_local for a in inner):
        return "link_local"
    if any(a.is_loopback or a.is_unspecified for a in inner):
        return "loopback"
    if any(not a.is_global or a.is_multicast for a in inner):
        return "private"
    return None


def _ipv4_spellings(dotted: str) -> list[str]:
    a, b, c, d = (int(x) for x in dotted.split("."))
    value = int(ipaddress.IPv4Address(dotted))
    spellings = [
        dotted,
        str(value),  # one decimal number
        hex(value),  # one hex number
        f"0{value:o}",  # one octal number
        f"{a}.{b}.{(c << 8) | d}",  # three parts
        f"{a}.{(b << 16) | (c << 8) | d}",  # two parts
        ".".join(f"0{x:o}" for x in (a, b, c, d)),  # octal dotted
        ".".join(hex(x) for x in (a, b, c, d)),  # hex dotted
        f"{hex(a)}.{b}.0{c:o}.{d}",  # mixed
    ]
    for spelling in spellings:  # every one is the same address to libc's own parser
        assert socket.inet_aton(spelling) == socket.inet_aton(dotted), spelling
    return spellings


def _ipv6_spellings(dotted: str) -> list[str]:
    v4 = ipaddress.IPv4Address(dotted)
    high, low = f"{int(v4) >> 16:x}", f"{int(v4) & 0xFFFF:x}"
    server = int(ipaddress.IPv4Address("65.54.227.120"))
    teredo = ipaddress.IPv6Address((0x20010000 << 96) | (server << 64) | (int(v4) ^ 0xFFFFFFFF))
    assert teredo.teredo is not None and teredo.teredo[1] == v4
    return [
        f"::ffff:{dotted}",
        f"::ffff:{high}:{low}",
        f"0:0:0:0:0:ffff:{high}:{low}",
        f"[::ffff:{dotted}]",
        f"::FFFF:{dotted.upper()}",
        f"64:ff9b::{dotted}",
        f"64:ff9b::{high}:{low}",
        f"2002:{high}:{low}::1",
        str(teredo),
        f"::{dotted}" if int(v4) > 0xFFFF else f"::ffff:{dotted}",
    ]


INTERNAL = ["169.254.169.254", "169.254.170.2", "100.100.100.200", "127.0.0.1", "127.8.9.10",
            "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.1.1", "100.64.1.1", "0.0.0.0", "192.0.2.1",
            "198.18.0.1"]  # fmt: skip


@pytest.mark.parametrize("dotted", INTERNAL)
def test_every_spelling_of_an_internal_ipv4_address_is_refused(dotted: str) -> None:
    rules = NetRules()
    for spelling in _ipv4_spellings(dotted) + _ipv6_spellings(dotted):
        bare = spelling.strip("[]")
        expected = _expected_category(_resolver_says(bare))
        assert expected is not None, spelling
        verdict = check_connect(rules, None, spelling, 80)
        assert (verdict.decision, verdict.rule) == ("BLOCK", f"net.{expected}"), (spelling, verdict)


@pytest.mark.parametrize(
    "address",
    ["fd00:ec2::254", "::1", "::", "fe80::1", "fe80::1%1", "fc00::1", "fd12:3456::1", "ff02::1",
     "2001:db8::1", "0:0:0:0:0:0:0:1", "[::1]", "FE80::ABCD"],
)  # fmt: skip
def test_internal_ipv6_addresses_are_refused(address: str) -> None:
    expected = _expected_category(_resolver_says(address.strip("[]")))
    verdict = check_connect(NetRules(), None, address, 443)
    assert (verdict.decision, verdict.rule) == ("BLOCK", f"net.{expected}"), verdict


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450:4001::200e"]
)
def test_public_addresses_pass(address: str) -> None:
    assert _expected_category(_resolver_says(address)) is None
    assert check_connect(NetRules(), "example.com", address, 443).decision == "ALLOW"


def test_documented_metadata_addresses_and_names_are_metadata() -> None:
    for address in DOCUMENTED_METADATA:
        assert check_connect(NetRules(), None, address, 80).rule == "net.metadata", address
    # GCP's name, whatever it resolves to, and unresolved.
    assert check_connect(NetRules(), "metadata.google.internal", "8.8.8.8", 80).rule == "net.metadata"
    assert check_connect(NetRules(), None, "metadata.google.internal.", 80).rule == "net.metadata"
    # Even with every category but metadata lifted.
    lifted = NetRules(deny=("metadata",))
    assert check_connect(lifted, None, "10.0.0.1", 80).decision == "ALLOW"
    assert check_connect(lifted, None, "::ffff:169.254.169.254", 80).rule == "net.metadata"


def test_allow_entries() -> None:
    rules = NetRules(allow=("127.0.0.1", "10.1.0.0/16", "169.254.0.0/16", "*.corp.example", "db.internal"))
    assert check_connect(rules, None, "127.0.0.1", 8080).decision == "ALLOW"
    assert check_connect(rules, None, "::ffff:127.0.0.1", 8080).decision == "ALLOW"
    assert check_connect(rules, None, "127.0.0.2", 8080).rule == "net.loopback"
    assert check_connect(rules, None, "10.1.200.3", 5432).decision == "ALLOW"
    assert check_connect(rules, None, "10.2.0.1", 5432).rule == "net.private"
    assert check_connect(rules, "api.corp.example", "10.9.9.9", 443).decision == "ALLOW"
    assert check_connect(rules, "corp.example", "10.9.9.9", 443).rule == "net.private"
    assert check_connect(rules, "db.internal", "192.168.0.5", 5432).decision == "ALLOW"
    assert check_connect(rules, None, "169.254.1.1", 80).decision == "ALLOW"
    # A wider CIDR or a name never unlocks the metadata service, whatever the name resolved to.
    assert check_connect(rules, None, "169.254.169.254", 80).rule == "net.metadata"
    assert check_connect(rules, "evil.corp.example", "169.254.169.254", 80).rule == "net.metadata"
    exact = NetRules(allow=("169.254.169.254",))
    assert check_connect(exact, None, "169.254.169.254", 80).decision == "ALLOW"


def test_default_block_admits_only_the_allow_list() -> None:
    rules = NetRules(allow=("93.184.215.0/24", "*.openai.com"), default="BLOCK")
    assert check_connect(rules, None, "93.184.215.14", 443).decision == "ALLOW"
    assert check_connect(rules, "api.openai.com", "162.159.140.245", 443).decision == "ALLOW"
    assert check_connect(rules, None, "8.8.8.8", 53).rule == "net.not_allowed"


def test_names_are_not_resolved_here() -> None:
    assert check_connect(NetRules(), None, "localhost", 80).rule == "net.loopback"
    assert check_connect(NetRules(allow=("localhost",)), None, "localhost", 80).decision == "ALLOW"
    assert check_connect(NetRules(), None, "example.com", 80).rule == "net.unresolved"


# --------------------------------------------------------------------------------------------------
# Tool output contracts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "kind"),
    [
        ({"a": 1}, "json"),
        ([1, 2], "json"),
        ('{"a": 1}', "json"),
        ("  [1, 2]\n", "json"),
        (b'{"a": 1}', "json"),
        (42, "json"),
        ("hello", "text"),
        ("{not json}", "text"),
        ("[unterminated", "text"),
        (b"\xff\xfe", "text"),
        (object(), "text"),
        (None, "none"),
    ],
)
def test_output_contracts(result: object, kind: str) -> None:
    for expected in ("json", "text"):
        drift = check_output(ToolContract(expected), result)  # type: ignore[arg-type]
        if kind == expected:
            assert drift is None
        else:
            assert drift == {"expected": expected, "got": kind, "drift": True}
    assert check_output(None, result) is None


def test_nameservers_of_a_resolv_conf() -> None:
    """resolv.conf(5) as systemd-resolved, glibc and a cloud image write it."""
    from failcore.policy.runtime import nameservers

    text = (
        "# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\n"
        "nameserver 127.0.0.53\n"
        "options edns0 trust-ad\n"
        "search ec2.internal\n"
        "nameserver  fe80::1%eth0\n"
        "nameserver 2001:DB8::0053\n"
        "; nameserver 10.0.0.2\n"
        "nameserver dns.example\n"
        "nameserver\n"
    )
    assert nameservers(text) == frozenset({"127.0.0.53", "fe80::1", "2001:db8::53"})


def test_the_system_resolvers_are_reached_on_port_53_only() -> None:
    rules, resolvers = NetRules(), frozenset({"127.0.0.53"})
    allowed = check_connect(rules, None, "127.0.0.53", 53, resolvers=resolvers)
    assert (allowed.decision, allowed.rule) == ("ALLOW", "net.system_resolver")
    assert check_connect(rules, None, "127.0.0.53", 5353, resolvers=resolvers).rule == "net.loopback"
    assert check_connect(rules, None, "127.0.0.54", 53, resolvers=resolvers).rule == "net.loopback"
    assert check_connect(rules, None, "::ffff:127.0.0.53", 53, resolvers=resolvers).decision == "ALLOW"
    off = NetRules(system_resolvers=False)
    assert check_connect(off, None, "127.0.0.53", 53, resolvers=resolvers).rule == "net.loopback"
