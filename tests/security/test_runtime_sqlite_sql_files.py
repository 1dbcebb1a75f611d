"""Runtime attack: a guarded tool makes SQLite write a file outside its write roots through a connection
the policy allowed (a database inside the roots): `ATTACH DATABASE` (a plain name, a `file:` URI, a
bound parameter), `VACUUM INTO` (a literal or a bound parameter) and the temp-file directory pragma.
No audit event shows these; every connection gets failcore's SQLite authorizer. Refused in strict mode
before SQLite opens the file: nothing is created outside, and the tape holds the fs event BLOCKED."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from failcore import Blocked, guard, run
from tests.runtime.helpers import runtime_events

POLICY = "version: 1\nfs:\n  write: ['.']\n"


def attach_plain(db: sqlite3.Connection) -> None:
    db.execute("ATTACH DATABASE '../outside/x.db' AS x")
    db.execute("CREATE TABLE x.t(a)")


def attach_uri(db: sqlite3.Connection) -> None:
    db.execute("ATTACH DATABASE 'file:../outside/x.db?mode=rwc' AS x")
    db.execute("CREATE TABLE x.t(a)")


def attach_parameter(db: sqlite3.Connection) -> None:
    db.execute("ATTACH DATABASE ? AS x", ("../outside/x.db",))
    db.execute("CREATE TABLE x.t(a)")


def vacuum_into(db: sqlite3.Connection) -> None:
    db.execute("VACUUM INTO '../outside/x.db'")


def vacuum_into_parameter(db: sqlite3.Connection) -> None:
    db.execute("VACUUM INTO ?", ("../outside/x.db",))


def script(db: sqlite3.Connection) -> None:
    db.executescript("/* a comment */ attach /**/ '../outside/x.db' as x; create table x.t(a);")


ATTACKS = [attach_plain, attach_uri, attach_parameter, vacuum_into, vacuum_into_parameter, script]


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.__name__ for a in ATTACKS])
def test_sqlite_sql_cannot_write_outside_the_roots(
    workdir: Path, tmp_path: Path, attack: Callable[[sqlite3.Connection], None]
) -> None:
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY)
    with run(policy=policy, tape=tape, strict=True):
        db = sqlite3.connect("inside.db")  # allowed: inside the roots, opened outside the guarded call
        db.execute("CREATE TABLE t(a)")
        with pytest.raises((Blocked, sqlite3.DatabaseError)):
            guard(attack)(db)
        db.close()
    assert not (tmp_path / "outside" / "x.db").exists()
    assert list((tmp_path / "outside").iterdir()) == []
    fs, tool = runtime_events(tape)
    assert (fs["kind"], fs["decision"], fs["fs"]["event"]) == ("fs", "BLOCK", "sqlite3.attach")
    if attack is attach_parameter:  # SQLite gives the authorizer no name: not judged, refused
        assert fs["rule"] == "fs.sqlite_unknown_file"
        assert fs["fs"]["path"] == "?"
    else:
        assert fs["rule"] == "fs.write_outside_roots"
        assert fs["fs"]["path"] == str(tmp_path / "outside" / "x.db")
    assert (tool["outcome"], tool["rule"]) == ("BLOCKED", fs["rule"])


def test_sqlite_temp_directory_pragma_outside_the_roots_is_refused(workdir: Path, tmp_path: Path) -> None:
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY)
    with run(policy=policy, tape=tape, strict=True):
        db = sqlite3.connect("inside.db")

        @guard
        def move_temp_files() -> None:
            db.execute(f"PRAGMA temp_store_directory = '{tmp_path / 'outside'}'")

        with pytest.raises(sqlite3.DatabaseError, match=r"not authorized|authorization denied"):
            move_temp_files()
        db.close()
    fs, tool = runtime_events(tape)
    assert (fs["decision"], fs["rule"], fs["fs"]["event"]) == (
        "BLOCK",
        "fs.write_outside_roots",
        "sqlite3.temp_store_directory",
    )
    assert tool["outcome"] == "BLOCKED"


def test_sqlite_attach_and_vacuum_inside_the_roots_still_work(workdir: Path, tmp_path: Path) -> None:
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY)
    with run(policy=policy, tape=tape, strict=True):
        db = sqlite3.connect("inside.db")

        @guard
        def backup() -> None:
            db.execute("ATTACH DATABASE 'other.db' AS o")
            db.execute("CREATE TABLE o.t(a)")
            db.execute("ATTACH DATABASE ':memory:' AS m")
            db.execute("VACUUM INTO 'copy.db'")

        backup()
        db.close()
    assert (workdir / "other.db").exists() and (workdir / "copy.db").exists()
    events = runtime_events(tape)
    assert [(e["kind"], e["decision"]) for e in events] == [
        ("fs", "ALLOW"),
        ("fs", "ALLOW"),
        ("tool", "ALLOW"),
    ]
    assert [e["fs"]["path"] for e in events[:2]] == [str(workdir / "other.db"), str(workdir / "copy.db")]


def test_outside_a_guarded_call_sqlite_is_not_judged(workdir: Path, tmp_path: Path) -> None:
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY)
    with run(policy=policy, tape=tape, strict=True):
        db = sqlite3.connect("inside.db")
        db.execute("ATTACH DATABASE '../outside/app.db' AS x")  # the application's own work
        db.close()
    assert (tmp_path / "outside" / "app.db").exists()
    assert runtime_events(tape) == []


def test_a_connection_made_directly_outside_the_call_gets_the_authorizer(
    workdir: Path, tmp_path: Path
) -> None:
    """sqlite3.Connection(...) instead of sqlite3.connect: authorized at the next audit event or when a
    guarded call starts."""
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY)
    with run(policy=policy, tape=tape, strict=True):
        db = sqlite3.Connection("inside.db")
        with pytest.raises(sqlite3.DatabaseError, match=r"not authorized|authorization denied"):
            guard(vacuum_into)(db)
        db.close()
    assert list((tmp_path / "outside").iterdir()) == []
    fs, tool = runtime_events(tape)
    assert (fs["decision"], fs["rule"], fs["fs"]["event"]) == (
        "BLOCK",
        "fs.write_outside_roots",
        "sqlite3.attach",
    )
    assert (tool["outcome"], tool["rule"]) == ("BLOCKED", "fs.write_outside_roots")


def test_a_connection_made_directly_inside_a_guarded_call_is_refused(workdir: Path, tmp_path: Path) -> None:
    """Nothing raises an audit event between its __init__ and its first statement: refused."""
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY)

    @guard
    def direct() -> None:
        db = sqlite3.Connection("inside.db")
        vacuum_into(db)

    with run(policy=policy, tape=tape, strict=True), pytest.raises(Blocked):
        direct()
    assert list((tmp_path / "outside").iterdir()) == []
    events = runtime_events(tape)
    assert [(e["kind"], e["decision"], e.get("rule")) for e in events] == [
        ("fs", "ALLOW", None),  # sqlite3.connect: inside.db is inside the roots
        ("fs", "BLOCK", "fs.sqlite_unchecked_connection"),
        ("tool", "BLOCK", "fs.sqlite_unchecked_connection"),
    ]
