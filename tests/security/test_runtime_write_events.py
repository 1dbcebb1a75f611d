"""Runtime attack: a guarded tool changes files outside its write roots through operations other than
open(): a SQLite database (sqlite3.connect creates the file), extended attributes (os.setxattr /
os.removexattr), a Unix socket's bind (creates a socket file), and chmod / setxattr through a descriptor
it opened only to read. Refused in strict mode before they happen: no file created, no attribute or
mode changed; the tape holds the fs event BLOCKED with the audit event it came from."""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from failcore import Blocked, guard, run
from tests.runtime.helpers import runtime_events

POLICY = "version: 1\nfs:\n  write: ['.']\n"


def xattrs_supported(directory: Path) -> bool:
    probe = directory / "xattr-probe"
    probe.write_text("")
    try:
        os.setxattr(probe, "user.failcore", b"1")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    finally:
        probe.unlink()
    return True


def run_refused(tmp_path: Path, attack: Callable[[], object]) -> tuple[dict, dict]:
    """Runs `attack` as a guarded call on a tape of its own; its refused fs event and its tool event."""
    policy, tape = tmp_path / "policy.yaml", tmp_path / f"tape-{len(list(tmp_path.glob('tape-*')))}"
    policy.write_text(POLICY)
    with run(policy=policy, tape=tape, strict=True), pytest.raises(Blocked) as refused:
        guard(attack)()
    assert refused.value.rule == "fs.write_outside_roots"
    *before, fs, tool = runtime_events(tape)
    assert all(e["decision"] == "ALLOW" for e in before)  # opening the file to read it
    assert (fs["kind"], fs["decision"], fs["rule"]) == ("fs", "BLOCK", "fs.write_outside_roots")
    assert (tool["outcome"], tool["rule"]) == ("BLOCKED", "fs.write_outside_roots")
    return fs, tool


def sqlite_plain() -> None:
    db = sqlite3.connect("../outside/agent.db")
    db.execute("create table t(x)")
    db.commit()
    db.close()


def sqlite_uri() -> None:
    sqlite3.connect("file:../outside/agent.db?mode=rwc", uri=True).close()


@pytest.mark.parametrize("attack", [sqlite_plain, sqlite_uri], ids=["plain", "uri"])
def test_sqlite_database_outside_the_roots_is_not_created(
    workdir: Path, tmp_path: Path, attack: Callable[[], None]
) -> None:
    fs, _ = run_refused(tmp_path, attack)
    assert not (tmp_path / "outside" / "agent.db").exists()
    assert fs["fs"] == {
        "path": str(tmp_path / "outside" / "agent.db"),
        "op": "write",
        "event": "sqlite3.connect",
        "target": None,
    }


def test_sqlite_read_only_uri_and_memory_databases_are_not_writes(workdir: Path, tmp_path: Path) -> None:
    existing = tmp_path / "outside" / "existing.db"
    with sqlite3.connect(existing) as db:
        db.execute("create table t(x)")
    db.close()
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY)

    @guard
    def read_only() -> list[object]:
        memory = sqlite3.connect(":memory:")
        memory.close()
        db = sqlite3.connect("file:../outside/existing.db?mode=ro", uri=True)
        try:
            return db.execute("select name from sqlite_master").fetchall()
        finally:
            db.close()

    with run(policy=policy, tape=tape, strict=True):
        assert read_only() == [("t",)]
    fs = [e for e in runtime_events(tape) if e["kind"] == "fs" and e["fs"]["event"] == "sqlite3.connect"]
    assert [(e["decision"], e["fs"]["op"], e["fs"]["path"]) for e in fs] == [("ALLOW", "read", str(existing))]


def test_setxattr_and_removexattr_outside_the_roots_are_refused(workdir: Path, tmp_path: Path) -> None:
    if not xattrs_supported(tmp_path):
        pytest.skip("the file system has no user extended attributes")
    victim = tmp_path / "outside" / "victim"
    victim.write_text("v")
    os.setxattr(victim, "user.kept", b"1")
    fs, _ = run_refused(tmp_path, lambda: os.setxattr("../outside/victim", "user.pwned", b"1"))
    assert fs["fs"]["event"] == "os.setxattr" and fs["fs"]["path"] == str(victim)
    fs, _ = run_refused(tmp_path, lambda: os.removexattr("../outside/victim", "user.kept"))
    assert fs["fs"]["event"] == "os.removexattr"
    assert os.listxattr(victim) == ["user.kept"]


def test_chmod_and_setxattr_through_a_read_descriptor_are_judged_by_its_file(
    workdir: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "outside" / "victim"
    victim.write_text("v")
    victim.chmod(0o600)

    def through_descriptor(change: Callable[[int], None]) -> Callable[[], None]:
        def attack() -> None:
            fd = os.open("../outside/victim", os.O_RDONLY)  # reading outside the write roots is allowed
            try:
                change(fd)
            finally:
                os.close(fd)

        return attack

    fs, _ = run_refused(tmp_path, through_descriptor(lambda fd: os.chmod(fd, 0o777)))
    assert (fs["fs"]["event"], fs["fs"]["path"]) == ("os.chmod", str(victim))
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    if xattrs_supported(tmp_path):
        run_refused(tmp_path, through_descriptor(lambda fd: os.setxattr(fd, "user.pwned", b"1")))
        assert os.listxattr(victim) == []


@pytest.mark.parametrize("address", ["../outside/agent.sock", bytearray(b"../outside/agent.sock")])
def test_unix_socket_bind_outside_the_roots_creates_no_file(
    workdir: Path, tmp_path: Path, address: str | bytearray
) -> None:
    def bind() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(address)

    fs, _ = run_refused(tmp_path, bind)
    assert not (tmp_path / "outside" / "agent.sock").exists()
    assert (fs["fs"]["event"], fs["fs"]["path"]) == ("socket.bind", str(tmp_path / "outside" / "agent.sock"))
