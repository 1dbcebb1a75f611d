"""MalformedRequests: a request mitmproxy refuses before it becomes a flow still reaches the tape.

When a client's request line or a header line does not parse, mitmproxy answers 400 and closes the
connection without a flow: no hook runs, and the only trace is a line in mitmproxy's log (the same for
a client that closes in the middle of a request head). Those lines are the one signal there is, so this
concern taps mitmproxy's connection log while the proxy runs and turns each into a `network`
event (`http.request`, outcome FAIL) naming what mitmproxy refused. Nothing left for the upstream. The
bytes mitmproxy quotes are not recorded (they are the client's, unparsed, and may hold a credential no
DLP rule knows): the event says which kind of line failed, and from which client address.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from failcore.event import EgressEvent, Target
from failcore.proxy.session import Session

# The logger of mitmproxy's connection handlers (mitmproxy.proxy.server): its layers' log commands.
MITMPROXY_CONNECTIONS = "mitmproxy.proxy.server"
# What mitmproxy's HTTP/1 server logs when a request head does not parse (mitmproxy.net.http.http1.read,
# logged as "<client address>: <error>"), and when the client closes in the middle of one.
REFUSED_400 = ("Bad HTTP request line", "Invalid header line", "Unknown HTTP version", "Invalid headers")
CLOSED_MID_HEAD = "Client closed connection before completing request headers"


def malformed_kind(message: str) -> str | None:
    """Which of mitmproxy's malformed-request lines `message` is (None: another log line). The kind
    that comes first wins: the bytes mitmproxy quotes after it are the client's and may name another."""
    found: tuple[int, str] | None = None
    for kind in (*REFUSED_400, CLOSED_MID_HEAD):
        at = message.find(kind)
        prefix = message[:at]  # none, or the client's address ("127.0.0.1:5000: ", no space inside)
        if at < 0 or (prefix and (not prefix.endswith(": ") or " " in prefix[:-2])):
            continue
        rest = message[at + len(kind) :]
        if (not rest or rest.startswith(":")) and (found is None or at < found[0]):
            found = (at, kind)
    return found[1] if found else None


def malformed_event(run_id: str, kind: str, client: Any, ts: float) -> dict[str, Any]:
    where = f"{client[0]}:{client[1]}" if isinstance(client, tuple) and len(client) >= 2 else None
    refused = kind != CLOSED_MID_HEAD
    return EgressEvent(
        kind="network",
        run=run_id,
        ts_start=ts,
        ts_end=ts,
        flow=str(uuid.uuid4()),  # mitmproxy made no flow: an id of the event's own
        action="http.request",
        target=Target("", 0, "http"),
        path="",
        summary=f"malformed request refused by mitmproxy (400): {kind}"
        if refused
        else "request head cut short: the client closed before it ended",
        decision="ALLOW",
        outcome="FAIL",
        fail_reason="connect_error" if refused else "client_disconnect",
        error=f"{kind} (mitmproxy answered 400; the bytes it quoted are not recorded)"
        if refused
        else f"{kind} (the partial head is not recorded)",
        status=400 if refused else None,
        detail={"malformed": kind, "client": where},
    ).to_dict()


class _LogTap:
    """Sees each line mitmproxy's connection handlers log, before the logger's level can drop it
    (mitmproxy logs these lines at INFO, which an embedded proxy's loggers drop before any record or
    handler exists). It stands in for the logger's `log` method, which mitmproxy's ConnectionHandler
    calls for every line: the logger's level, handlers and propagation stay as they were, and lines that
    are not a malformed request cost one short text search. One for every proxy in this process."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.owners: list[MalformedRequests] = []

    def install(self) -> None:
        self.logger.log = self.log  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self.logger.__dict__.get("log") == self.log:
            del self.logger.log

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level == logging.INFO and isinstance(msg, str) and not args:
            try:
                if (kind := malformed_kind(msg)) is not None:
                    extra = kwargs.get("extra")
                    client = extra.get("client") if isinstance(extra, dict) else None
                    for owner in self.owners:
                        owner.seen(kind, client)
            except Exception:  # mitmproxy's logging goes on whatever happens here
                logging.getLogger("failcore").debug("failcore: malformed-request tap failed", exc_info=True)
        # One frame more than mitmproxy's own call: the record still names mitmproxy's line as its source.
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
        logging.Logger.log(self.logger, level, msg, *args, **kwargs)


_tap: _LogTap | None = None


class MalformedRequests:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.loop: asyncio.AbstractEventLoop | None = None

    def running(self) -> None:
        global _tap
        if self.loop is not None:
            return
        # Each in-process proxy runs its own loop: the log of another's connections is not this run's.
        self.loop = asyncio.get_running_loop()
        if _tap is None:
            _tap = _LogTap(logging.getLogger(MITMPROXY_CONNECTIONS))
            _tap.install()
        _tap.owners.append(self)

    def done(self) -> None:
        global _tap
        if self.loop is None or _tap is None:
            return
        self.loop = None
        if self in _tap.owners:
            _tap.owners.remove(self)
        if not _tap.owners:
            _tap.uninstall()
            _tap = None

    def seen(self, kind: str, client: Any) -> None:
        try:
            if asyncio.get_running_loop() is not self.loop:
                return
        except RuntimeError:
            return
        self.session.record(malformed_event(self.session.run_id, kind, client, time.time()))
