"""MalformedRequests: a request mitmproxy refuses before it becomes a flow still reaches the tape.

When a client's request line or a header line does not parse, mitmproxy answers 400 and closes the
connection without a flow: no hook runs, and the only trace is a line in mitmproxy's log (the same for
a client that closes in the middle of a request head). Those lines are the one signal there is, so this
concern listens to mitmproxy's connection log while the proxy runs and turns each into a `network`
event (`http.request`, outcome FAIL) naming what mitmproxy refused. Nothing left for the upstream. The
bytes mitmproxy quotes are not recorded (they are the client's, unparsed, and may hold a credential no
DLP rule knows): the event says which kind of line failed, and from which client address.
"""

from __future__ import annotations

import asyncio
import logging
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
    """Which of mitmproxy's malformed-request lines `message` is (None: another log line)."""
    for kind in (*REFUSED_400, CLOSED_MID_HEAD):
        at = message.find(kind)
        if at < 0 or (at > 0 and not message[:at].endswith(": ")):
            continue
        rest = message[at + len(kind) :]
        if not rest or rest.startswith(":"):
            return kind
    return None


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


class _Listener(logging.Handler):
    """The one handler on mitmproxy's connection logger, for every proxy in this process. mitmproxy logs
    the lines it needs at INFO, which the logger's level usually drops before any handler runs: while a
    proxy runs, the logger takes INFO and stops propagating, and this handler passes on to the parent
    loggers exactly the records they would have had (at or above the level the logger had)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logger
        self.owners: list[MalformedRequests] = []
        self.level_before = logger.level
        self.propagate_before = logger.propagate

    def install(self) -> None:
        self.logger.addHandler(self)
        if not self.logger.isEnabledFor(logging.INFO):
            self.logger.setLevel(logging.INFO)
        self.logger.propagate = False

    def uninstall(self) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_before)
        self.logger.propagate = self.propagate_before

    def emit(self, record: logging.LogRecord) -> None:
        try:
            for owner in self.owners:
                owner.seen(record)
        except Exception:  # a log handler must not take mitmproxy's logging down
            self.handleError(record)
        parent = self.logger.parent
        if not self.propagate_before or parent is None:
            return
        threshold = self.level_before or parent.getEffectiveLevel()
        if record.levelno >= threshold:
            parent.callHandlers(record)


_listener: _Listener | None = None


class MalformedRequests:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.loop: asyncio.AbstractEventLoop | None = None

    def running(self) -> None:
        global _listener
        if self.loop is not None:
            return
        # Each in-process proxy runs its own loop: the log of another's connections is not this run's.
        self.loop = asyncio.get_running_loop()
        if _listener is None:
            _listener = _Listener(logging.getLogger(MITMPROXY_CONNECTIONS))
            _listener.install()
        _listener.owners.append(self)

    def done(self) -> None:
        global _listener
        if self.loop is None or _listener is None:
            return
        self.loop = None
        if self in _listener.owners:
            _listener.owners.remove(self)
        if not _listener.owners:
            _listener.uninstall()
            _listener = None

    def seen(self, record: logging.LogRecord) -> None:
        if record.levelno != logging.INFO:
            return
        kind = malformed_kind(record.getMessage())
        if kind is None:
            return
        try:
            if asyncio.get_running_loop() is not self.loop:
                return
        except RuntimeError:
            return
        client = getattr(record, "client", None)
        self.session.record(malformed_event(self.session.run_id, kind, client, record.created))
