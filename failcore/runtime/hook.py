"""The PEP 578 audit hook: file, process and socket operations inside a guarded call become fs, exec and
connect events, checked against the run's policy and refused (strict) before they happen.

Installed once per process (audit hooks cannot be removed). Outside guarded calls it costs two global
reads and a dict lookup per audit event: `_armed` holds the guarded calls in progress, and a few events
are followed always (os.putenv, a SQLite connection's handle: what they set up may serve a guarded call
later). Inside one, failcore's own work
(policy reload, event building, the tape writer's thread, the channel to `failcore run`) runs with a
per-thread `busy` flag, so it is never recorded or refused.

A plain `threading.Thread` started inside a guarded call is adopted (the `_thread.start_new_thread`
event names its bootstrap method): while the call lasts, its operations are the call's effects.

Operations Python raises no (or an incomplete) audit event for are judged by wrappers install() puts
in place of os.open (its dir_fd), os.mkfifo, os.mknod, socket.getaddrinfo (which name an address came
from) and sqlite3.connect (the authorizer that judges the files SQL makes SQLite open).

What this cannot see: C extensions and ctypes making syscalls themselves, children after `os.fork`
(the fork itself is an exec event), operations through an already-open descriptor, a function of those
wrapped above taken before install(), and a SQLite authorizer the tool sets itself (it replaces ours).

Size: one audit hook and every handler it dispatches to share its per-thread state (the `busy` flag,
the armed calls, `_dispatch` into the guarded call); the wrappers and the SQLite authorizer feed the
same dispatch. Moving the SQLite part (~180 lines) out needs that state in a module of its own first,
which was not done yet.
"""

from __future__ import annotations

import contextlib
import os
import site
import socket
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from failcore.event import Target
from failcore.policy.address import canonical_ip
from failcore.policy.runtime import Verdict
from failcore.policy.runtime_env import code_env_entry
from failcore.runtime.context import Blocked, CallState, RunState, current_call
from failcore.runtime.events import apply_dlp, effect_event, internal_error_event

_local = threading.local()
_lock = threading.Lock()
# The guarded calls in progress in this process; empty = the hook returns at once.
_armed: set[CallState] = set()
_installed = False

_WRITE_FLAGS: Final = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _library_prefixes() -> tuple[str, ...]:
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sysconfig.get_paths()["purelib"]}
    found.update(getattr(site, "getsitepackages", list)())
    return tuple(os.path.join(os.path.realpath(p), "") for p in found if p)


# Reads of the interpreter's own library (imports inside a tool) are not the tool's effects; computed
# by install() (sysconfig is slow to ask, and `failcore run` imports this package without the hook).
_LIBRARY: tuple[str, ...] = ()


def install() -> None:
    global _installed, _LIBRARY
    with _lock:
        if not _installed:
            _LIBRARY = _library_prefixes()
            sys.addaudithook(_hook)
            _wrap_os()
            _wrap_getaddrinfo()
            _wrap_sqlite()
            _installed = True


def arm(call: CallState) -> None:
    if _unauthorized:
        _authorize_pending()
    _armed.add(call)  # set.add/discard are atomic under the GIL: no lock on the guarded path


def disarm(call: CallState) -> None:
    _armed.discard(call)


class internal:
    """Context manager: failcore's own work on this thread is not recorded or refused."""

    __slots__ = ("_was",)

    def __enter__(self) -> None:
        self._was = getattr(_local, "busy", False)
        _local.busy = True

    def __exit__(self, *_exc: object) -> None:
        _local.busy = self._was


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _unauthorized:
        _authorize_pending()
    always = _ALWAYS.get(event)
    if always is not None:
        always(args)  # in a guarded call or not: what they set up may be used in one
        return
    if not _armed:
        return
    handler = _HANDLERS.get(event)
    if handler is None:
        return
    _dispatch(event, handler, args)


def _dispatch(
    event: str, handler: Callable[[CallState, tuple[Any, ...]], None], args: tuple[Any, ...]
) -> None:
    """Judge an operation in the guarded call of this context (or of this adopted thread), if any."""
    if getattr(_local, "busy", False):
        return
    call = current_call.get()
    if call is None:
        call = getattr(threading.current_thread(), "_failcore_call", None)
        if call is None or not call.open:
            return
    _local.busy = True
    try:
        handler(call, args)
    except Blocked:
        raise
    except Exception as exc:
        _internal_failure(call, event, exc)
    finally:
        _local.busy = False


def _internal_failure(call: CallState, event: str, exc: Exception) -> None:
    if not record_failure(call.run, f"runtime.hook:{event}", exc):
        raise Blocked(f"failcore failed while checking {event} and the policy says fail_open: false")


def record_failure(run: RunState, where: str, exc: Exception) -> bool:
    """Record a failure inside failcore; True when the policy fails open (the default)."""
    run.internal_errors += 1
    fail_open = True
    try:
        fail_open = run.rules.fail_open
        run.record(internal_error_event(run.run_id, where, exc, fail_open))
    except Exception:  # pragma: no cover - the last line of defence
        pass
    return fail_open


@dataclass(frozen=True, slots=True)
class _FailedClosed:
    """Stands in for a verdict the policy could not give when it says fail_open: false."""

    decision: str = "BLOCK"
    rule: str = "internal_error"
    reason: str = "failcore could not check this operation and the policy says fail_open: false"


def _ask(call: CallState, check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The policy's verdict, or (failcore failed) None when failing open, a refusal when failing closed."""
    try:
        return check(*args, **kwargs)
    except Exception as exc:
        return None if record_failure(call.run, "runtime.policy", exc) else _FailedClosed()


def _decide(
    call: CallState,
    kind: str,
    action: str,
    payload: dict[str, Any] | Callable[[], dict[str, Any]],
    verdicts: list[Any],
    summary: str,
    target: Target | None = None,
) -> None:
    blocking = next((v for v in verdicts if v is not None and v.decision == "BLOCK"), None)
    run = call.run
    call.effects[kind] += 1
    # An allowing verdict can name why too (net.failcore_proxy): kept when nothing blocks.
    named = blocking or next((v for v in verdicts if v is not None and v.rule), None)
    rule = named.rule if named else None
    reason = named.reason if named else None
    if blocking is None:
        decision, would_block = "ALLOW", False
    elif run.strict or isinstance(blocking, _FailedClosed):
        decision, would_block = "BLOCK", False
        call.effects["blocked"] += 1
        if call.blocked_by is None:
            call.blocked_by = (rule, reason)
        run.blocked += 1
    else:
        decision, would_block = "WARN", True
        call.would_block = True
        run.warned += 1

    now = time.time()
    scanner, salt = run.rules.current().scanner, run.rules.salt

    def build() -> dict[str, Any]:
        body = payload() if callable(payload) else payload
        event = effect_event(
            call,
            kind,
            action,
            body,
            decision=decision,
            rule=rule,
            reason=reason,
            would_block=would_block,
            summary=summary,
            target=target,
            ts=now,
        )
        return apply_dlp(event, scanner, salt)  # a path can hold a secret too

    run.record(build)  # type: ignore[arg-type]
    if decision == "BLOCK":
        raise Blocked(f"failcore blocked {action} {summary}: {reason or rule}", rule=rule, action=action)


def _path(value: Any) -> str | None:
    if isinstance(value, int) or value is None:
        return None  # an open descriptor: the file was checked when it was opened
    try:
        raw = os.fsdecode(value)
    except TypeError:
        return None
    return os.path.realpath(raw)


def _descriptor_path(value: Any) -> str | None:
    """The file an open descriptor stands for now (Linux /proc), or None (a pipe, a socket, no /proc).
    chmod, chown, utime and the xattr calls change a file through a descriptor opened only to read it."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return None
    try:
        path = os.readlink(f"/proc/self/fd/{value}")
    except OSError:
        return None
    return path if path.startswith("/") else None


def _on_open(call: CallState, args: tuple[Any, ...]) -> None:
    path = _path(args[0])
    if path is None:
        return
    mode, flags = args[1], args[2] or 0
    write = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
    if not write and path.startswith(_LIBRARY):
        return
    op = "write" if write else "read"
    verdict = _ask(call, call.run.rules.check_fs, op, os.fsdecode(args[0]))
    _decide(
        call, "fs", f"fs.{op}", {"path": path, "op": op, "event": "open", "target": None}, [verdict], path
    )


def _at(value: Any, args: tuple[Any, ...], index: int | None) -> Any:
    """`value` as the kernel resolves it: a relative path given with a directory descriptor (`dir_fd`,
    `src_dir_fd`, `dst_dir_fd`: args[index]) is taken from that directory, as `/proc/self/fd/N/PATH`,
    which `realpath` follows to the directory the descriptor stands for (without /proc it stays a path
    under /proc, outside any root but `/`)."""
    if index is None or index >= len(args) or value is None or isinstance(value, int):
        return value
    fd = args[index]
    if not isinstance(fd, int) or isinstance(fd, bool) or fd < 0:  # -1: none given; AT_FDCWD < 0
        return value
    try:
        text = os.fsdecode(value)
    except TypeError:
        return value
    return text if text.startswith("/") else f"/proc/self/fd/{fd}/{text}"


def _fs_op(
    op: str,
    event: str,
    two: bool = False,
    descriptor: bool = False,
    dirs: tuple[int | None, int | None] = (None, None),
) -> Callable[[CallState, tuple[Any, ...]], None]:
    """A handler for an audit event whose first argument is the path changed (the second one too with
    `two`); with `descriptor`, an open descriptor given instead is judged by the file it stands for;
    `dirs`: where the event carries the directory descriptor each path is relative to."""

    def handle(call: CallState, args: tuple[Any, ...]) -> None:
        first = _at(args[0], args, dirs[0])
        if descriptor and isinstance(first, int):
            first = _descriptor_path(first)
        path = _path(first)
        if path is None:
            return
        second = _at(args[1], args, dirs[1]) if two and len(args) > 1 else None
        target = _path(second)
        rules = call.run.rules
        verdicts = [_ask(call, rules.check_fs, op, os.fsdecode(first))]
        if target is not None:
            verdicts.append(_ask(call, rules.check_fs, "write", os.fsdecode(second)))
        payload = {"path": path, "op": op, "event": event, "target": target}
        _decide(call, "fs", f"fs.{op}", payload, verdicts, path + (f" -> {target}" if target else ""))

    return handle


def _search_path(env: Any) -> tuple[str, ...]:
    """The directories a child given `env` (None: this process's environment) looks a bare name up in."""
    try:
        return tuple(os.fsdecode(d) for d in os.get_exec_path(env))
    except (ValueError, TypeError, AttributeError):  # PATH both as str and bytes, not text: nothing found
        return ()


# execve and posix_spawn take a bare name as a file in the working directory (an empty PATH entry).
_NO_SEARCH: Final = ("",)


def _exec(action: str, event: str, shell: bool) -> Callable[[CallState, tuple[Any, ...]], None]:
    def handle(call: CallState, args: tuple[Any, ...]) -> None:
        # Where the child looks for a bare name and where it starts: the program is judged by the file
        # it will run (a PATH in Popen's env, a relative PATH entry, a cwd), not by this process's PATH.
        search: tuple[str, ...] | None = None
        cwd: str | None = None
        env: Any = None  # the child's environment: None = this process's
        if event == "os.system":
            program, argv, is_shell = "/bin/sh", ["/bin/sh", "-c", os.fsdecode(args[0])], True
        elif event == "subprocess.Popen":  # (executable, args, cwd, env)
            executable, raw = args[0], args[1]
            argv = [os.fsdecode(a) for a in ([raw] if isinstance(raw, str | bytes | os.PathLike) else raw)]
            program = os.fsdecode(executable) if executable is not None else (argv[0] if argv else "")
            # Popen resolves shell=True to [/bin/sh, -c, CMD] before this event.
            is_shell = len(argv) >= 3 and argv[1] == "-c" and os.path.basename(program) in _SHELLS
            env = args[3] if len(args) > 3 else None
            search = _search_path(env)
            if len(args) > 2 and args[2] is not None:
                cwd = os.path.join(os.getcwd(), os.fsdecode(args[2]))
        elif event in ("os.fork", "os.forkpty"):
            program, argv, is_shell = sys.executable, [], False
        else:  # os.exec (path, args, env), os.posix_spawn (path, argv, env), os.spawn (mode, path, args, env)
            offset = 1 if event == "os.spawn" else 0
            program = os.fsdecode(args[offset])
            argv = [os.fsdecode(a) for a in (args[offset + 1] or [])]
            is_shell = len(argv) >= 3 and argv[1] == "-c" and os.path.basename(program) in _SHELLS
            # os.posix_spawnp raises os.posix_spawn too and searches this process's PATH: a bare name is
            # judged as the file in the working directory if there is one (posix_spawn), else as found.
            search = _NO_SEARCH + _search_path(None) if event == "os.posix_spawn" else _NO_SEARCH
            env = args[offset + 2] if len(args) > offset + 2 else None
        check = call.run.rules.check_exec
        # A fork runs this process's code, not a program: its environment changes nothing.
        child_env = None if event in ("os.fork", "os.forkpty") else _child_env(env)
        verdict = _ask(call, check, program, argv, shell=is_shell, path=search, cwd=cwd, env=child_env)
        # argv is masked with the fs/connect fields, by apply_dlp when the event is built (see _decide).
        payload = {"program": program, "argv": argv, "shell": is_shell, "event": event}
        _decide(call, "exec", action, payload, [verdict], os.path.basename(program) or program)

    return handle


# Variables this process set with os.putenv (not in os.environ): a child started without an env of its
# own inherits them. os.environ's own changes call putenv too.
_putenv: dict[str, str | None] = {}


def _on_putenv(args: tuple[Any, ...]) -> None:
    try:
        _putenv[os.fsdecode(args[0])] = os.fsdecode(args[1])
    except (TypeError, IndexError):
        return


def _on_unsetenv(args: tuple[Any, ...]) -> None:
    try:
        _putenv[os.fsdecode(args[0])] = None
    except (TypeError, IndexError):
        return


def _child_env(env: Any) -> dict[str, str]:
    """The variables of CODE_ENV in the environment a child gets (`env` None: this process's)."""
    found: dict[str, str] = {}
    if env is None:
        for name in {*os.environ, *_putenv}:
            if code_env_entry(name) is None:
                continue
            value = _putenv[name] if name in _putenv else os.environ.get(name)
            if value is not None:
                found[name] = value
        return found
    try:
        items = list(env.items())
    except (AttributeError, TypeError):
        return found
    for key, value in items:
        try:
            name, text = os.fsdecode(key), os.fsdecode(value)
        except TypeError:
            continue
        if code_env_entry(name) is not None:
            found[name] = text
    return found


_SHELLS: Final = frozenset({"sh", "bash", "dash", "zsh", "ksh", "fish", "csh", "tcsh", "busybox"})


def _on_getaddrinfo(call: CallState, args: tuple[Any, ...]) -> None:
    host, port = args[0], args[1]
    if isinstance(host, bytes):
        host = host.decode("idna", "replace")
    if not isinstance(host, str):
        return
    if canonical_ip(host) is not None:
        return  # an address: judged when connect() gets it
    # A name the policy judges without resolving (metadata.google.internal, localhost) is refused before
    # the DNS query; any other name is judged by the address connect() gets.
    verdict = _ask(call, call.run.rules.check_connect, host, host, port if isinstance(port, int) else 0)
    if verdict is not None and verdict.decision == "BLOCK" and verdict.rule != "net.unresolved":
        shown_port = port if isinstance(port, int) else 0
        payload = {"address": host, "family": "ipv4", "event": "socket.getaddrinfo"}
        target = Target(host, shown_port, "udp" if len(args) > 3 and args[3] == socket.SOCK_DGRAM else "tcp")
        _decide(call, "connect", "net.connect", payload, [verdict], f"{host}:{shown_port}", target)


def _on_address(event: str) -> Callable[[CallState, tuple[Any, ...]], None]:
    """socket.connect (connect and connect_ex), socket.sendto and socket.sendmsg (self, address): an
    address a packet goes to is judged like a connection to it, whether it is a connect(2), a UDP
    datagram or a TCP Fast Open connection (sendto with MSG_FASTOPEN). sendmsg on a connected socket
    carries no address (its connect was judged). Every datagram is checked; one a call sends to an
    address it already sent to with the same verdict is not recorded again."""
    datagram = event != "socket.connect"

    def handle(call: CallState, args: tuple[Any, ...]) -> None:
        sock, address = args[0], args[1]
        if address is None:
            return
        family = getattr(sock, "family", None)
        if family == socket.AF_UNIX:
            if isinstance(address, bytearray | memoryview):
                address = bytes(address)
            path = os.fsdecode(address) if isinstance(address, str | bytes) else str(address)
            if datagram and call.sent.get((family, path)) == (None, None):
                return
            payload = {"address": path, "family": "unix", "event": event}
            _decide(call, "connect", "net.connect", payload, [], path, Target(path, 0, "tcp"))
            if datagram:
                call.sent[(family, path)] = (None, None)
            return
        if not isinstance(address, tuple) or len(address) < 2:
            return
        ip, port = str(address[0]), int(address[1])
        host = _resolved.get(ip)  # the name asked for, if this address is one it resolved to
        verdict = _ask(call, call.run.rules.check_connect, host, ip, port)
        key = (family, host, ip, port)
        seen = (verdict.decision, verdict.rule) if verdict is not None else (None, None)
        if datagram and call.sent.get(key) == seen:
            return
        fam = "ipv6" if family == socket.AF_INET6 else "ipv4"
        payload = {"address": ip, "family": fam, "event": event}
        shown = host or ip
        target = Target(shown, port, "udp" if getattr(sock, "type", None) == socket.SOCK_DGRAM else "tcp")
        _decide(call, "connect", "net.connect", payload, [verdict], f"{shown}:{port}", target)
        if datagram:  # not refused: the same verdict for this address is not recorded again
            call.sent[key] = seen

    return handle


_write_socket_file = _fs_op("write", "socket.bind")


def _on_bind(call: CallState, args: tuple[Any, ...]) -> None:
    """bind() of a Unix socket creates a file at its path; an IP address and port is not a connection
    out (what connects in is not the call's doing)."""
    sock, address = args[0], args[1]
    if getattr(sock, "family", None) != socket.AF_UNIX:
        return
    if isinstance(address, bytearray | memoryview):
        address = bytes(address)
    try:
        path = os.fsdecode(address)
    except TypeError:
        return
    if not path or path.startswith("\0"):
        return  # Linux's abstract namespace (or an automatic name in it): no file
    _write_socket_file(call, (path,))


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
    verdicts = [_ask(call, rules.check_fs, op, name) for op, name in names]
    op, path = names[0][0], os.path.realpath(names[0][1])
    payload = {"path": path, "op": op, "event": event, "target": None}
    _decide(call, "fs", f"fs.{op}", payload, verdicts, path)


def _on_sqlite_connect(call: CallState, args: tuple[Any, ...]) -> None:
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
_SQLITE_DIRECTORY_PRAGMAS: Final = frozenset({"temp_store_directory", "data_store_directory"})


# A connection's authorizer can be set only once its __init__ is done, after the handle event: the
# connections sqlite3.connect makes get it when it returns (install() wraps it); any other (a
# sqlite3.Connection made directly, a `connect` taken before the first run()) waits here for the next
# audit event or guarded call, and is refused when made inside a guarded call (it could ATTACH before).
_unauthorized: list[tuple[Any, int]] = []


def _authorize(connection: Any) -> bool:
    try:
        connection.set_authorizer(_sqlite_authorizer)
    except Exception:  # still in __init__ (ProgrammingError), or not a connection we know
        return False
    return True


def _authorize_pending() -> None:
    """Give the waiting connections the authorizer; one still in its __init__ waits for the next event
    (three at most: a connection whose __init__ failed never takes it)."""
    waiting = []
    while _unauthorized:
        try:
            connection, tries = _unauthorized.pop()
        except IndexError:  # another thread took the last one
            break
        if not _authorize(connection) and tries < 3:
            waiting.append((connection, tries + 1))
    _unauthorized.extend(waiting)


def _on_sqlite_handle(args: tuple[Any, ...]) -> None:
    if not args or getattr(_local, "sqlite_connecting", 0):
        return  # sqlite3.connect's wrapper sets the authorizer when the connection is made
    if _armed:  # raises Blocked (strict) when made in a guarded call: the connection is not made
        _dispatch("sqlite3.connect/handle", _on_unchecked_connection, args)
    _unauthorized.append((args[0], 0))


def _on_unchecked_connection(call: CallState, args: tuple[Any, ...]) -> None:
    verdict = Verdict(
        "BLOCK",
        "fs.sqlite_unchecked_connection",
        "a SQLite connection not made by sqlite3.connect cannot get failcore's authorizer before its "
        "first statement (ATTACH, VACUUM INTO); use sqlite3.connect",
    )
    payload = {"path": "?", "op": "write", "event": "sqlite3.connect/handle", "target": None}
    _decide(call, "fs", "fs.write", payload, [verdict], "? (sqlite3.Connection)")


def _wrap_sqlite() -> None:
    import functools

    try:
        import sqlite3
    except ImportError:  # a Python built without it
        return
    real = sqlite3.connect

    @functools.wraps(real)
    def connect(*args: Any, **kwargs: Any) -> Any:
        _local.sqlite_connecting = getattr(_local, "sqlite_connecting", 0) + 1
        try:
            connection = real(*args, **kwargs)
        finally:
            _local.sqlite_connecting -= 1
        if not _authorize(connection):  # pragma: no cover - a factory that is no Connection
            _unauthorized.append((connection, 0))
        return connection

    for module in (sqlite3, sys.modules.get("sqlite3.dbapi2"), sys.modules.get("_sqlite3")):
        if module is not None and getattr(module, "connect", None) is real:
            module.connect = connect  # type: ignore[attr-defined]


def _sqlite_authorizer(action: int, first: str | None, second: str | None, _db: Any, _trigger: Any) -> int:
    if action == _SQLITE_ATTACH:
        event, name = "sqlite3.attach", first
    elif action == _SQLITE_PRAGMA and second and (first or "").lower() in _SQLITE_DIRECTORY_PRAGMAS:
        event, name = f"sqlite3.{(first or '').lower()}", second
    else:
        return _SQLITE_OK
    if not _armed:
        return _SQLITE_OK
    try:
        _dispatch(event, _on_sqlite_sql, (name, event))
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
        _decide(call, "fs", "fs.write", payload, [verdict], "? (a bound parameter)")
        return
    if event == "sqlite3.attach":
        names = _sqlite_names(name)
        if names:
            _judge_sqlite(call, names, event)
        return
    _judge_sqlite(call, [("write", name)], event)  # a directory SQLite creates its files in


def _on_thread_start(call: CallState, args: tuple[Any, ...]) -> None:
    owner = getattr(args[0], "__self__", None)
    if isinstance(owner, threading.Thread):
        owner._failcore_call = call  # type: ignore[attr-defined]


_ALWAYS: Final[dict[str, Callable[[tuple[Any, ...]], None]]] = {
    "sqlite3.connect/handle": _on_sqlite_handle,
    "os.putenv": _on_putenv,
    "os.unsetenv": _on_unsetenv,
}

_HANDLERS: Final[dict[str, Callable[[CallState, tuple[Any, ...]], None]]] = {
    "open": _on_open,
    "os.remove": _fs_op("delete", "os.remove", dirs=(1, None)),
    "os.rmdir": _fs_op("delete", "os.rmdir", dirs=(1, None)),
    "shutil.rmtree": _fs_op("delete", "shutil.rmtree"),
    "os.rename": _fs_op("rename", "os.rename", two=True, dirs=(2, 3)),
    "shutil.move": _fs_op("rename", "shutil.move", two=True),
    "os.mkdir": _fs_op("mkdir", "os.mkdir", dirs=(2, None)),
    # chmod, chown, utime and the xattr calls work through a descriptor opened only to read the file.
    "os.chmod": _fs_op("chmod", "os.chmod", descriptor=True, dirs=(2, None)),
    "os.chown": _fs_op("chmod", "os.chown", descriptor=True, dirs=(3, None)),
    "shutil.chown": _fs_op("chmod", "shutil.chown"),
    "os.chflags": _fs_op("chmod", "os.chflags"),
    "os.lchflags": _fs_op("chmod", "os.lchflags"),
    "os.setxattr": _fs_op("xattr", "os.setxattr", descriptor=True),
    "os.removexattr": _fs_op("xattr", "os.removexattr", descriptor=True),
    "os.truncate": _fs_op("write", "os.truncate"),
    "os.utime": _fs_op("write", "os.utime", descriptor=True, dirs=(3, None)),
    "sqlite3.connect": _on_sqlite_connect,
    "os.symlink": _fs_op("write", "os.symlink", two=True, dirs=(None, 2)),
    "os.link": _fs_op("write", "os.link", two=True, dirs=(2, 3)),
    "shutil.copyfile": _fs_op("read", "shutil.copyfile", two=True),
    "shutil.copytree": _fs_op("read", "shutil.copytree", two=True),
    "subprocess.Popen": _exec("exec.spawn", "subprocess.Popen", False),
    "os.system": _exec("exec.system", "os.system", True),
    "os.exec": _exec("exec.exec", "os.exec", False),
    "os.posix_spawn": _exec("exec.spawn", "os.posix_spawn", False),
    "os.spawn": _exec("exec.spawn", "os.spawn", False),
    "os.fork": _exec("exec.fork", "os.fork", False),
    "os.forkpty": _exec("exec.fork", "os.forkpty", False),
    "socket.getaddrinfo": _on_getaddrinfo,
    "socket.connect": _on_address("socket.connect"),
    "socket.sendto": _on_address("socket.sendto"),
    "socket.sendmsg": _on_address("socket.sendmsg"),
    "socket.bind": _on_bind,
    "_thread.start_new_thread": _on_thread_start,
}


# os.mkfifo and os.mknod raise no audit event (CPython 3.12-3.14), and os.open's `open` event leaves out
# its dir_fd: install() replaces these functions of `os` (and `posix`) by wrappers that judge them first.
# A reference taken before the first run() keeps the original, like ctypes (see the module docstring).
_make_fifo = _fs_op("write", "os.mkfifo", dirs=(2, None))
_make_node = _fs_op("write", "os.mknod", dirs=(3, None))


# Which name each address came from (socket.getaddrinfo, wrapped by install()): a connection is judged
# with the name only when the name resolved to that very address (not the last name this thread asked
# for, which would lend an allowed name to any address connected to next). asyncio resolves on another
# thread than it connects on: kept for the process, the latest RESOLVED_KEPT addresses, forgotten when
# a run opens (a name resolved before it, by the application or an earlier run, names nothing in it).
RESOLVED_KEPT: Final = 1024
_resolved: dict[str, str] = {}


def forget_names() -> None:
    _resolved.clear()


def _remember(host: Any, results: Any) -> None:
    if isinstance(host, bytes):
        host = host.decode("idna", "replace")
    if not isinstance(host, str) or canonical_ip(host) is not None:
        return
    for *_, sockaddr in results:
        address = str(sockaddr[0])
        _resolved.pop(address, None)
        _resolved[address] = host
    while len(_resolved) > RESOLVED_KEPT:
        try:
            del _resolved[next(iter(_resolved))]
        except (KeyError, RuntimeError, StopIteration):  # another thread changed it meanwhile
            break


def _wrap_getaddrinfo() -> None:
    import functools

    real = socket.getaddrinfo

    @functools.wraps(real)
    def getaddrinfo(
        host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        results = real(host, port, family, type, proto, flags)
        with contextlib.suppress(Exception):  # never break name resolution
            _remember(host, results)
        return results

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]


def _wrap_os() -> None:
    import functools

    real_open = os.open

    @functools.wraps(real_open)
    def open_at(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is None or not _armed:
            return real_open(path, flags, mode, dir_fd=dir_fd)
        _dispatch("open", _on_open, (_at(path, (dir_fd,), 0), None, flags))
        with internal():  # the `open` event it raises names the path without its directory: judged above
            return real_open(path, flags, mode, dir_fd=dir_fd)

    wrappers: dict[str, Callable[..., Any]] = {"open": open_at}
    real_mkfifo = getattr(os, "mkfifo", None)
    if real_mkfifo is not None:

        @functools.wraps(real_mkfifo)
        def mkfifo(path: Any, mode: int = 0o666, *, dir_fd: int | None = None) -> None:
            if _armed:
                _dispatch("os.mkfifo", _make_fifo, (path, mode, -1 if dir_fd is None else dir_fd))
            real_mkfifo(path, mode, dir_fd=dir_fd)

        wrappers["mkfifo"] = mkfifo
    real_mknod = getattr(os, "mknod", None)
    if real_mknod is not None:

        @functools.wraps(real_mknod)
        def mknod(path: Any, mode: int = 0o600, device: int = 0, *, dir_fd: int | None = None) -> None:
            if _armed:
                _dispatch("os.mknod", _make_node, (path, mode, device, -1 if dir_fd is None else dir_fd))
            real_mknod(path, mode, device, dir_fd=dir_fd)

        wrappers["mknod"] = mknod
    native = sys.modules.get(os.name)  # posix (or nt): `from posix import *` is where os got them
    for name, wrapper in wrappers.items():
        original = getattr(os, name)
        for module in (os, native):
            if module is not None and getattr(module, name, None) is original:
                setattr(module, name, wrapper)
        # shutil.rmtree and others ask whether os.open takes dir_fd by looking for the function here.
        for supported in (os.supports_dir_fd, os.supports_fd, os.supports_follow_symlinks):
            if original in supported:
                supported.add(wrapper)
