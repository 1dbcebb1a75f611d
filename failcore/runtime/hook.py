"""The PEP 578 audit hook: file, process and socket operations inside a guarded call become fs, exec and
connect events, checked against the run's policy and refused (strict) before they happen.

Installed once per process (audit hooks cannot be removed). Outside guarded calls it costs two global
reads and a dict lookup per audit event: `armed` holds the guarded calls in progress, and a few events
are followed always (os.putenv, a SQLite connection's handle: what they set up may serve a guarded call
later). Inside one, failcore's own work
(policy reload, event building, the tape writer's thread, the channel to `failcore run`) runs with a
per-thread `busy` flag, so it is never recorded or refused.

A plain `threading.Thread` started inside a guarded call is adopted (the `_thread.start_new_thread`
event names its bootstrap method): while the call lasts, its operations are the call's effects.

Operations Python raises no (or an incomplete) audit event for are judged by wrappers install() puts
in place of os.open (its dir_fd), os.mkfifo, os.mknod, socket.getaddrinfo (which name an address came
from) and sqlite3.connect (the authorizer that judges the files SQL makes SQLite open:
failcore.runtime.sqlitehook). The state they share with the hook is failcore.runtime.dispatch's.

What this cannot see: C extensions and ctypes making syscalls themselves, children after `os.fork`
(the fork itself is an exec event), operations through an already-open descriptor, a function of those
wrapped above taken before install(), and `sqlite3.Connection.set_authorizer(db, None)` called on the
base class (the connections sqlite3.connect makes keep ours through their own set_authorizer).
"""

from __future__ import annotations

import os
import site
import socket
import sys
import sysconfig
import threading
from collections.abc import Callable
from typing import Any, Final

from failcore.event import Target
from failcore.policy.address import canonical_ip
from failcore.policy.runtime_env import judged_env_entry
from failcore.runtime import names, sqlitehook
from failcore.runtime.context import CallState
from failcore.runtime.dispatch import armed, ask, decide, dispatch, internal
from failcore.runtime.names import resolved as resolved_names
from failcore.runtime.sqlitehook import unauthorized as _unauthorized

_lock = threading.Lock()
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
            names.wrap_getaddrinfo()
            sqlitehook.wrap_connect()
            _installed = True


def arm(call: CallState) -> None:
    if _unauthorized:
        sqlitehook.authorize_pending()
    armed.add(call)  # set.add/discard are atomic under the GIL: no lock on the guarded path


def disarm(call: CallState) -> None:
    armed.discard(call)


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _unauthorized:
        sqlitehook.authorize_pending()
    always = _ALWAYS.get(event)
    if always is not None:
        always(args)  # in a guarded call or not: what they set up may be used in one
        return
    if not armed:
        return
    handler = _HANDLERS.get(event)
    if handler is None:
        return
    dispatch(event, handler, args)


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
    verdict = ask(call, call.run.rules.check_fs, op, os.fsdecode(args[0]))
    decide(call, "fs", f"fs.{op}", {"path": path, "op": op, "event": "open", "target": None}, [verdict], path)


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
        verdicts = [ask(call, rules.check_fs, op, os.fsdecode(first))]
        if target is not None:
            verdicts.append(ask(call, rules.check_fs, "write", os.fsdecode(second)))
        payload = {"path": path, "op": op, "event": event, "target": target}
        decide(call, "fs", f"fs.{op}", payload, verdicts, path + (f" -> {target}" if target else ""))

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
        verdict = ask(call, check, program, argv, shell=is_shell, path=search, cwd=cwd, env=child_env)
        # argv is masked with the fs/connect fields, by apply_dlp when the event is built (see decide).
        payload = {"program": program, "argv": argv, "shell": is_shell, "event": event}
        decide(call, "exec", action, payload, [verdict], os.path.basename(program) or program)

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
    """The variables of JUDGED_ENV in the environment a child gets (`env` None: this process's)."""
    found: dict[str, str] = {}
    if env is None:
        for name in {*os.environ, *_putenv}:
            if judged_env_entry(name) is None:
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
        if judged_env_entry(name) is not None:
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
    verdict = ask(call, call.run.rules.check_connect, host, host, port if isinstance(port, int) else 0)
    if verdict is not None and verdict.decision == "BLOCK" and verdict.rule != "net.unresolved":
        shown_port = port if isinstance(port, int) else 0
        payload = {"address": host, "family": "ipv4", "event": "socket.getaddrinfo"}
        target = Target(host, shown_port, "udp" if len(args) > 3 and args[3] == socket.SOCK_DGRAM else "tcp")
        decide(call, "connect", "net.connect", payload, [verdict], f"{host}:{shown_port}", target)


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
            decide(call, "connect", "net.connect", payload, [], path, Target(path, 0, "tcp"))
            if datagram:
                call.sent[(family, path)] = (None, None)
            return
        if not isinstance(address, tuple) or len(address) < 2:
            return
        ip, port = str(address[0]), int(address[1])
        host = resolved_names.get(ip)  # the name asked for, if this address is one it resolved to
        verdict = ask(call, call.run.rules.check_connect, host, ip, port)
        key = (family, host, ip, port)
        seen = (verdict.decision, verdict.rule) if verdict is not None else (None, None)
        if datagram and call.sent.get(key) == seen:
            return
        fam = "ipv6" if family == socket.AF_INET6 else "ipv4"
        payload = {"address": ip, "family": fam, "event": event}
        shown = host or ip
        target = Target(shown, port, "udp" if getattr(sock, "type", None) == socket.SOCK_DGRAM else "tcp")
        decide(call, "connect", "net.connect", payload, [verdict], f"{shown}:{port}", target)
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


def _on_thread_start(call: CallState, args: tuple[Any, ...]) -> None:
    owner = getattr(args[0], "__self__", None)
    if isinstance(owner, threading.Thread):
        owner._failcore_call = call  # type: ignore[attr-defined]


_ALWAYS: Final[dict[str, Callable[[tuple[Any, ...]], None]]] = {
    "sqlite3.connect/handle": sqlitehook.on_handle,
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
    "sqlite3.connect": sqlitehook.on_connect,
    "sqlite3.load_extension": sqlitehook.on_load_extension,
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


def _wrap_os() -> None:
    import functools

    real_open = os.open

    @functools.wraps(real_open)
    def open_at(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is None or not armed:
            return real_open(path, flags, mode, dir_fd=dir_fd)
        dispatch("open", _on_open, (_at(path, (dir_fd,), 0), None, flags))
        with internal():  # the `open` event it raises names the path without its directory: judged above
            return real_open(path, flags, mode, dir_fd=dir_fd)

    wrappers: dict[str, Callable[..., Any]] = {"open": open_at}
    real_mkfifo = getattr(os, "mkfifo", None)
    if real_mkfifo is not None:

        @functools.wraps(real_mkfifo)
        def mkfifo(path: Any, mode: int = 0o666, *, dir_fd: int | None = None) -> None:
            if armed:
                dispatch("os.mkfifo", _make_fifo, (path, mode, -1 if dir_fd is None else dir_fd))
            real_mkfifo(path, mode, dir_fd=dir_fd)

        wrappers["mkfifo"] = mkfifo
    real_mknod = getattr(os, "mknod", None)
    if real_mknod is not None:

        @functools.wraps(real_mknod)
        def mknod(path: Any, mode: int = 0o600, device: int = 0, *, dir_fd: int | None = None) -> None:
            if armed:
                dispatch("os.mknod", _make_node, (path, mode, device, -1 if dir_fd is None else dir_fd))
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
