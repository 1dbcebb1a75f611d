"""Runtime attack: a guarded tool gets rid of failcore's SQLite authorizer before it ATTACHes a database
outside its write roots, `db.set_authorizer(None)` or an authorizer of its own that allows everything
(each replaced failcore's); or it makes SQLite load a native library: SQL's `load_extension()` (its
library is named only when the statement runs) or Connection.load_extension(PATH) (judged as a program,
like an LD_PRELOAD library). Refused in strict mode: nothing is created outside, no library is loaded,
and the tape holds the event BLOCKED.

This interpreter may be built without loadable extensions (no Connection.enable_load_extension): SQL's
load_extension() then reaches the authorizer all the same (SQLite refuses it after), and the
`sqlite3.load_extension` audit event CPython raises before loading is raised by the test itself."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from failcore import Blocked, guard, run
from tests.runtime.helpers import runtime_events

POLICY = "version: 1\nfs:\n  write: ['.']\nexec:\n  allow_shell: false\n  programs: [git]\n"
GCC = shutil.which("gcc")
LOADS = hasattr(sqlite3.Connection, "enable_load_extension")
LIBRARY_C = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen("MARKER", "w");
    if (f) { fputs("loaded", f); fclose(f); }
}
int sqlite3_extension_init(void *db, char **err, const void *api) { return 0; }
"""


def allow_everything(*_args: object) -> int:
    return sqlite3.SQLITE_OK


def removed(db: sqlite3.Connection) -> None:
    db.set_authorizer(None)
    db.execute("ATTACH DATABASE '../outside/x.db' AS x")
    db.execute("CREATE TABLE x.t(a)")


def replaced(db: sqlite3.Connection) -> None:
    db.set_authorizer(allow_everything)
    db.execute("ATTACH DATABASE '../outside/x.db' AS x")
    db.execute("CREATE TABLE x.t(a)")


@pytest.mark.parametrize("attack", [removed, replaced], ids=["set_authorizer_none", "own_authorizer"])
def test_failcores_authorizer_stays(
    workdir: Path, tmp_path: Path, attack: Callable[[sqlite3.Connection], None]
) -> None:
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY)
    with run(policy=policy, tape=tape, strict=True):
        db = sqlite3.connect("inside.db")
        with pytest.raises((Blocked, sqlite3.DatabaseError)):
            guard(attack)(db)
        db.close()
    assert list((tmp_path / "outside").iterdir()) == []
    fs, tool = runtime_events(tape)
    assert (fs["kind"], fs["decision"], fs["rule"]) == ("fs", "BLOCK", "fs.write_outside_roots")
    assert fs["fs"]["event"] == "sqlite3.attach"
    assert (tool["outcome"], tool["rule"]) == ("BLOCKED", "fs.write_outside_roots")


def test_a_tools_own_authorizer_is_still_asked(workdir: Path, tmp_path: Path) -> None:
    """Behind failcore's: an authorizer refusing reads of a table keeps refusing them."""
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY)

    def no_secrets(action: int, first: str | None, *_rest: object) -> int:
        return (
            sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_READ and first == "secrets" else sqlite3.SQLITE_OK
        )

    with run(policy=policy, tape=tape, strict=True):
        db = sqlite3.connect("inside.db")
        db.execute("CREATE TABLE secrets(a)")
        db.set_authorizer(no_secrets)
        with pytest.raises(sqlite3.DatabaseError, match="prohibited"):
            db.execute("SELECT a FROM secrets")
        db.close()


def sql_load_extension(db: sqlite3.Connection, library: Path) -> None:
    if LOADS:
        db.enable_load_extension(True)
    db.execute("SELECT load_extension(?)", (str(library),))


def test_sql_load_extension_is_refused(workdir: Path, tmp_path: Path) -> None:
    policy, tape, library = tmp_path / "policy.yaml", tmp_path / "tape", tmp_path / "planted.so"
    policy.write_text(POLICY)
    with run(policy=policy, tape=tape, strict=True):
        db = sqlite3.connect("inside.db")
        with pytest.raises((Blocked, sqlite3.DatabaseError)):
            guard(sql_load_extension)(db, library)
        db.close()
    exec_event, tool = runtime_events(tape)
    assert (exec_event["kind"], exec_event["decision"], exec_event["rule"]) == (
        "exec",
        "BLOCK",
        "exec.sqlite_extension",
    )
    assert exec_event["action"] == "exec.load"
    assert (tool["outcome"], tool["rule"]) == ("BLOCKED", "exec.sqlite_extension")


def method_load_extension(db: sqlite3.Connection, library: Path) -> None:
    if LOADS:
        db.enable_load_extension(True)
        db.load_extension(str(library))
    else:  # what CPython raises before it loads the library (Modules/_sqlite/connection.c)
        sys.audit("sqlite3.load_extension", db, str(library))


@pytest.mark.skipif(GCC is None, reason="needs gcc")
def test_connection_load_extension_of_an_unlisted_library_is_refused(workdir: Path, tmp_path: Path) -> None:
    policy, tape, library = tmp_path / "policy.yaml", tmp_path / "tape", tmp_path / "planted.so"
    source = tmp_path / "planted.c"
    source.write_text(LIBRARY_C.replace("MARKER", str(tmp_path / "outside" / "MARKER")))
    subprocess.run([GCC, "-shared", "-fPIC", "-o", library, source], check=True)
    policy.write_text(POLICY)
    with run(policy=policy, tape=tape, strict=True):
        db = sqlite3.connect("inside.db")
        with pytest.raises(Blocked) as refused:
            guard(method_load_extension)(db, library)
        db.close()
    assert refused.value.rule == "exec.program"
    assert not (tmp_path / "outside" / "MARKER").exists()
    exec_event, tool = runtime_events(tape)
    assert (exec_event["kind"], exec_event["action"], exec_event["decision"]) == (
        "exec",
        "exec.load",
        "BLOCK",
    )
    assert exec_event["exec"]["program"] == str(library)
    assert (tool["outcome"], tool["rule"]) == ("BLOCKED", "exec.program")
