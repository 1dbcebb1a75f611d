"""The `failcore run` side of the runtime channel: children that call `run()` send their tool, fs, exec
and connect events to a unix socket in a fresh 0700 directory, and they land on the run's tape between
the proxy's own events.

The first line a child sends is the token `failcore run` exported (FAILCORE_EVENTS_TOKEN); a wrong one
closes the connection. Only runtime kinds are accepted: anything else becomes an internal_error naming
the sender, never written as given. Every accepted event is stamped with this run's id and the
sender's pid (SO_PEERCRED, not what it claims), then submitted like the proxy's own events (same
bounded queue, same drop accounting). Runs on the proxy's event loop and never blocks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import secrets
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from typing import Any, Final

import orjson

from failcore.event import RUNTIME_KINDS, SCHEMA_VERSION, EgressEvent
from failcore.readiness import readable_now

MAX_LINE: Final = 1 << 20
_RESERVED: Final = ("prev", "seq", "h")
_BLOCKS: Final = {"tool": "tool", "fs": "fs", "exec": "exec", "connect": "connect"}
# What every runtime event carries (EgressEvent.to_dict); views rely on these.
_REQUIRED: Final = (
    "ts_start", "egress", "action", "decision", "rule", "reason", "would_block", "outcome", "fail_reason",
    "error", "latency_ms", "warnings",
)  # fmt: skip


def peer_pid(sock: socket.socket | None) -> int | None:
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return struct.unpack("3i", raw)[0]


def accept_event(raw: bytes, run_id: str, pid: int | None) -> tuple[dict[str, Any] | None, str | None]:
    """(event to record, None) for a well-formed runtime event, else (None, why it was refused)."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(event, dict):
        return None, "not a JSON object"
    kind = event.get("kind")
    if kind == "internal_error":  # a failure inside the child's failcore: recorded in our own words
        error = event.get("error")
        return EgressEvent(
            kind="internal_error",
            run=run_id,
            ts_start=time.time(),
            fail_reason="internal_error",
            error=f"in the runtime of pid {pid}: {str(error)[:1000]}",
            detail={"where": "runtime.child", "sender_pid": pid},
        ).to_dict(), None
    if kind not in RUNTIME_KINDS:
        return None, f"kind {str(kind)[:40]!r} is not one a child may send ({', '.join(RUNTIME_KINDS)})"
    if not isinstance(event.get("call"), str) or not isinstance(event.get(_BLOCKS[kind]), dict):
        return None, f"a {kind} event needs a call id and a {kind} block"
    missing = [key for key in _REQUIRED if key not in event]
    if missing:
        return None, f"a {kind} event needs {', '.join(missing)}"
    for key in _RESERVED:
        event.pop(key, None)
    event["run"] = run_id
    event["v"] = SCHEMA_VERSION
    if kind == "tool":
        origin = event["tool"].get("origin")
        event["tool"]["origin"] = {**(origin if isinstance(origin, dict) else {}), "pid": pid}
    else:
        event["pid"] = pid
    return event, None


class EventChannel:
    """The listening socket `failcore run` exports as FAILCORE_EVENTS."""

    def __init__(self, run_id: str, record: Callable[[dict[str, Any]], None]) -> None:
        self.run_id = run_id
        self._record = record
        self.token = secrets.token_urlsafe(32)
        self.directory = tempfile.mkdtemp(prefix="failcore-events-")  # 0700
        self.path = os.path.join(self.directory, "events.sock")
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.refused = 0
        self.connections = 0

    def used(self) -> bool:
        """A child has connected (or is waiting in the backlog to): it may have events the run must
        write. Counted at connection, not per event, so a child that exits right after sending is
        never missed because its lines were not read yet."""
        if self.connections:
            return True
        sockets = self._server.sockets if self._server is not None else ()
        return any(readable_now(s) for s in sockets if s.fileno() >= 0)

    def env(self) -> dict[str, str]:
        return {"FAILCORE_EVENTS": self.path, "FAILCORE_EVENTS_TOKEN": self.token}

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_LINE)
        os.chmod(self.path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        pid = peer_pid(writer.get_extra_info("socket"))
        try:
            first = await reader.readline()
            if not hmac.compare_digest(first.rstrip(b"\n"), self.token.encode("ascii")):
                self._refuse(pid, "wrong or missing FAILCORE_EVENTS_TOKEN")
                return
            while True:
                line = await _read_line(reader)
                if line is None:
                    # One event too long is refused (and said so); the child's later events still count.
                    self._refuse(pid, f"a line longer than {MAX_LINE} bytes")
                    continue
                if not line:
                    return
                if not line.strip():
                    continue
                event, why = accept_event(line, self.run_id, pid)
                if event is None:
                    self._refuse(pid, why or "refused")
                    continue
                self.accepted += 1
                self._record(event)
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()
            if task is not None:
                self._handlers.discard(task)

    def _refuse(self, pid: int | None, why: str) -> None:
        self.refused += 1
        self._record(
            EgressEvent(
                kind="internal_error",
                run=self.run_id,
                ts_start=time.time(),
                fail_reason="internal_error",
                error=f"runtime channel refused an event from pid {pid}: {why}"[:1000],
                detail={"where": "runtime.channel", "sender_pid": pid},
            ).to_dict()
        )

    async def close(self, drain: float = 5.0) -> None:
        """Stop listening, let connected children's last events in (at most `drain` s), remove the dir."""
        if self._server is not None:
            self._server.close()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=drain)
        for task in list(self._handlers):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1)
        shutil.rmtree(self.directory, ignore_errors=True)


async def _read_line(reader: asyncio.StreamReader) -> bytes | None:
    """The next line (b"" at the end of the stream), or None for a line longer than the reader's limit,
    which is then skipped up to and including its newline, however much of it is still to arrive."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as e:
        return e.partial
    except asyncio.LimitOverrunError as e:
        skip = e.consumed
    while True:
        try:
            if skip:
                await reader.readexactly(skip)
            await reader.readuntil(b"\n")  # the rest of the long line, now short enough
            return None
        except asyncio.IncompleteReadError:
            return None  # the stream ended inside the long line; the next read returns b""
        except asyncio.LimitOverrunError as e:
            skip = e.consumed
