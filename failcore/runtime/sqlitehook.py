"""SQLite, for the audit hook (failcore.runtime.hook): the files a connection opens, and the ones SQL
makes SQLite open, which no audit event shows.

- `sqlite3.connect` (audit event): the database file, judged like open() (a `file:` URI both as a URI
  and as the plain name it is without);
- every connection made once the hook is installed gets an authorizer that judges `ATTACH DATABASE`,
  `VACUUM INTO` and the temp-file directory pragmas inside a guarded call; sqlite3.connect is wrapped so
  the connections it makes get it when it returns (`wrap_connect`); any other one waits for the next
  audit event (`unauthorized`, `authorize_pending`) and is refused when made inside a guarded call.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, Final

from failcore.policy.runtime import Verdict
from failcore.runtime.context import Blocked, CallState
from failcore.runtime.dispatch import armed, ask, decide, dispatch, local


def _sqlite_uri(text: str) -> tuple[str, str] | None:
    """(op, path) of a SQLite `file:` URI, or None when it names no file (in memory, a temporary
    database, another host, which SQLite refuses)."""
    from urllib.parse import parse_qs, unquote, urlsplit

    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        return None
    path = unquote(parts.path)
    modes = parse_qs(parts.query).get("mode", [])
    if path in ("", ":memory:") or (modes and all(mode == "memory" for mode in modes)):
        return None
    return ("read" if modes and all(mode == "ro" for mode in modes) else "write"), path


def _sqlite_names(text: str) -> list[tuple[str, str]]:
    """(op, path) of the files a SQLite database name may open: a `file:` name both as a URI and as the
    plain file name it is without (whether URIs are understood depends on flags the event does not
    carry); none for an in-memory or temporary database."""
    names = [("write", text)] if text not in ("", ":memory:") else []
    uri = _sqlite_uri(text) if text.startswith("file:") else None
    if uri is not None:
        names.insert(0, uri)
    return names


def _judge_sqlite(call: CallState, names: list[tuple[str, str]], event: str) -> None:
    rules = call.run.rules
    verdicts = [ask(call, rules.check_fs, op, name) for op, name in names]
    op, path = names[0][0], os.path.realpath(names[0][1])
    payload = {"path": path, "op": op, "event": event, "target": None}
    decide(call, "fs", f"fs.{op}", payload, verdicts, path)


def on_connect(call: CallState, args: tuple[Any, ...]) -> None:
    """sqlite3.connect(database) opens the file to write, creating it, unless a `file:` URI says
    mode=ro. Whether the caller passed uri=True is not in the event: a `file:` name is judged both as a
    URI and as the plain file name it is without."""
    database = args[0] if args else None
    if database is None or isinstance(database, int):
        return
    try:
        text = os.fsdecode(database)
    except TypeError:
        return
    names = _sqlite_names(text)
    if names:
        _judge_sqlite(call, names, "sqlite3.connect")


# SQLite opens files of its own from SQL, which no audit event shows: `ATTACH DATABASE 'FILE'` and
# `VACUUM INTO 'FILE'` (the authorizer sees it as an ATTACH of FILE), and the deprecated pragmas naming
# the directory of its temporary files. Every connection made once the hook is installed gets an
# authorizer (sqlite3.connect/handle) that judges them like sqlite3.connect, inside a guarded call.
_SQLITE_OK: Final = 0
_SQLITE_DENY: Final = 1
_SQLITE_PRAGMA: Final = 19
_SQLITE_ATTACH: Final = 24
_SQLITE_FUNCTION: Final = 31
_SQLITE_DIRECTORY_PRAGMAS: Final = frozenset({"temp_store_directory", "data_store_directory"})


# A connection's authorizer can be set only once its __init__ is done, after the handle event: the
# connections sqlite3.connect makes get it when it returns (install() wraps it); any other (a
# sqlite3.Connection made directly, a `connect` taken before the first run()) waits here for the next
# audit event or guarded call, and is refused when made inside a guarded call (it could ATTACH before).
unauthorized: list[tuple[Any, int]] = []


def _authorize(connection: Any) -> bool:
    try:
        connection.set_authorizer(_sqlite_authorizer)
    except Exception:  # still in __init__ (ProgrammingError), or not a connection we know
        return False
    return True


def authorize_pending() -> None:
    """Give the waiting connections the authorizer; one still in its __init__ waits for the next event
    (three at most: a connection whose __init__ failed never takes it)."""
    waiting = []
    while unauthorized:
        try:
            connection, tries = unauthorized.pop()
        except IndexError:  # another thread took the last one
            break
        if not _authorize(connection) and tries < 3:
            waiting.append((connection, tries + 1))
    unauthorized.extend(waiting)


def on_handle(args: tuple[Any, ...]) -> None:
    if not args or getattr(local, "sqlite_connecting", 0):
        return  # sqlite3.connect's wrapper sets the authorizer when the connection is made
    if armed:  # raises Blocked (strict) when made in a guarded call: the connection is not made
        dispatch("sqlite3.connect/handle", _on_unchecked_connection, args)
    unauthorized.append((args[0], 0))


def _on_unchecked_connection(call: CallState, args: tuple[Any, ...]) -> None:
    verdict = Verdict(
        "BLOCK",
        "fs.sqlite_unchecked_connection",
        "a SQLite connection not made by sqlite3.connect cannot get failcore's authorizer before its "
        "first statement (ATTACH, VACUUM INTO); use sqlite3.connect",
    )
    payload = {"path": "?", "op": "write", "event": "sqlite3.connect/handle", "target": None}
    decide(call, "fs", "fs.write", payload, [verdict], "? (sqlite3.Connection)")


def wrap_connect() -> None:
    import functools

    try:
        import sqlite3
    except ImportError:  # a Python built without it
        return
    real = sqlite3.connect

    @functools.wraps(real)
    def connect(*args: Any, **kwargs: Any) -> Any:
        # The connection is made by a subclass of the factory asked for whose set_authorizer keeps ours.
        if len(args) > 5:
            args = (*args[:5], _keeping(args[5]), *args[6:])
        else:
            kwargs["factory"] = _keeping(kwargs.get("factory", sqlite3.Connection))
        local.sqlite_connecting = getattr(local, "sqlite_connecting", 0) + 1
        try:
            connection = real(*args, **kwargs)
        finally:
            local.sqlite_connecting -= 1
        if not _authorize(connection):  # pragma: no cover - a factory that is no Connection
            unauthorized.append((connection, 0))
        return connection

    for module in (sqlite3, sys.modules.get("sqlite3.dbapi2"), sys.modules.get("_sqlite3")):
        if module is not None and getattr(module, "connect", None) is real:
            module.connect = connect  # type: ignore[attr-defined]


_keeping_classes: dict[type, type] = {}


def _keeping(factory: Any) -> Any:
    """`factory` (a sqlite3.Connection class) subclassed so that `set_authorizer` cannot remove failcore's
    authorizer: None sets ours alone, a tool's own authorizer is asked after ours (ours refusing wins).
    Anything else is returned as is. `sqlite3.Connection.set_authorizer(connection, None)`, the base
    class's method called directly, still replaces it: documented in the README's threat model."""
    import sqlite3

    if not isinstance(factory, type) or not issubclass(factory, sqlite3.Connection):
        return factory
    made = _keeping_classes.get(factory)
    if made is None:

        def set_authorizer(self: Any, authorizer_callback: Any) -> None:
            super(made, self).set_authorizer(_after_ours(authorizer_callback))  # type: ignore[arg-type]

        namespace = {"__slots__": (), "set_authorizer": set_authorizer, "__module__": factory.__module__}
        made = type(factory.__name__, (factory,), namespace)
        made.__qualname__ = factory.__qualname__
        _keeping_classes[factory] = made
    return made


def _after_ours(authorizer: Any) -> Any:
    if authorizer is None or authorizer is _sqlite_authorizer:
        return _sqlite_authorizer

    def both(action: int, first: str | None, second: str | None, db: Any, trigger: Any) -> int:
        verdict = _sqlite_authorizer(action, first, second, db, trigger)
        return verdict if verdict != _SQLITE_OK else authorizer(action, first, second, db, trigger)

    return both


def _sqlite_authorizer(action: int, first: str | None, second: str | None, _db: Any, _trigger: Any) -> int:
    handler: Callable[[CallState, tuple[Any, ...]], None] = _on_sqlite_sql
    if action == _SQLITE_ATTACH:
        event, name = "sqlite3.attach", first
    elif action == _SQLITE_PRAGMA and second and (first or "").lower() in _SQLITE_DIRECTORY_PRAGMAS:
        event, name = f"sqlite3.{(first or '').lower()}", second
    elif action == _SQLITE_FUNCTION and (second or "").lower() == "load_extension":
        event, name, handler = "sqlite3.load_extension", None, _on_sql_extension
    else:
        return _SQLITE_OK
    if not armed:
        return _SQLITE_OK
    try:
        dispatch(event, handler, (name, event))
    except Blocked:
        return _SQLITE_DENY  # SQLite raises "not authorized"; the call ends BLOCKED with the rule
    return _SQLITE_OK


def _on_sqlite_sql(call: CallState, args: tuple[Any, ...]) -> None:
    """A file SQL asks SQLite to open (ATTACH, VACUUM INTO, a temporary-file directory pragma). A name
    computed when the statement runs (`ATTACH ? AS x`: the authorizer sees no name) cannot be judged
    before the file is opened: refused unless the write roots cover everything."""
    name, event = args
    if name is None:
        fs = call.run.rules.policy.fs
        verdict = (
            None
            if "/" in fs.write and fs._deny_regex is None
            else Verdict(
                "BLOCK",
                "fs.sqlite_unknown_file",
                "SQLite ATTACH of a file named by a bound parameter cannot be judged before it opens "
                "the file; write the file name in the SQL text",
            )
        )
        payload = {"path": "?", "op": "write", "event": event, "target": None}
        decide(call, "fs", "fs.write", payload, [verdict], "? (a bound parameter)")
        return
    if event == "sqlite3.attach":
        names = _sqlite_names(name)
        if names:
            _judge_sqlite(call, names, event)
        return
    _judge_sqlite(call, [("write", name)], event)  # a directory SQLite creates its files in


# A SQLite extension is a native library the process loads and runs: judged as a program (like an
# LD_PRELOAD library), listed in exec.programs by its path, when Connection.load_extension names it;
# SQL's load_extension() names it only when the statement runs, so it is refused under an exec section
# that lists programs.
def on_load_extension(call: CallState, args: tuple[Any, ...]) -> None:
    """The `sqlite3.load_extension` audit event (connection, path)."""
    try:
        path = os.fsdecode(args[1])
    except (IndexError, TypeError):
        path = "?"
    verdict = ask(call, call.run.rules.check_exec, path, [path], shell=False, path=())
    payload = {"program": path, "argv": [path], "shell": False, "event": "sqlite3.load_extension"}
    decide(call, "exec", "exec.load", payload, [verdict], os.path.basename(path) or path)


def _on_sql_extension(call: CallState, args: tuple[Any, ...]) -> None:
    rules = call.run.rules.policy.exec
    verdict = (
        None
        if rules.programs is None
        else Verdict(
            "BLOCK",
            "exec.sqlite_extension",
            "SQL load_extension() names the library it loads only when the statement runs: it cannot be "
            "judged before; call Connection.load_extension(PATH) with PATH listed in exec.programs",
        )
    )
    payload = {"program": "?", "argv": ["load_extension()"], "shell": False, "event": args[1]}
    decide(call, "exec", "exec.load", payload, [verdict], "? (SQL load_extension)")
