"""Log lines that quote what a client or a server sent, masked and escaped before any handler writes them.

A terminal's output is often kept on disk (the systemd journal, `mitmdump … > proxy.log`, a CI log), so
a log line is held to the tape's rule: no credential or DLP hit in clear. And recorded content is
hostile: a host, an SNI or an exception message with ESC sequences must not reach a terminal raw.

`LogMask` is a logging.Filter that failcore's addon puts on the loggers while it is loaded:
- failcore's own loggers (`failcore`, `failcore.*`): every argument of a record (what a log line
  quotes: a host, an SNI, a URL, an exception) and its exception's traceback are masked with the
  active policy's DLP rules, and with the echoes of a flow's credentials a record carries
  (`extra={LOG_ECHOES: …}`), then escaped (failcore.textsafe: a newline is kept, the lines after
  it indented, so quoted text cannot forge a log record). Format strings are failcore's own
  (ruff's G rules keep variable text out of them) and are left as they are;
- mitmproxy's proxy server log (`mitmproxy.proxy.server`, where the protocol layers' messages go):
  only the kinds of message that quote client or server bytes (`MITMPROXY_QUOTING`: a request head it
  could not read, a connection closed mid-head, a TLS handshake naming the SNI, a server address…) are
  masked and escaped whole; every other line costs one regular-expression match.
While the DLP rules compile (a first start, a reload with new rules) one of failcore's records waits
for the engine that serves meanwhile (failcore.dlp.pending: a fraction of a second), mitmproxy's do not;
what cannot be scanned is withheld, never shown in clear.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from failcore.dlp.pending import PendingEngine
from failcore.evidence.quoted import masked_prose
from failcore.evidence.redact import mask_echoes
from failcore.textsafe import printable
from failcore.wiretext import utf8_bytes

if TYPE_CHECKING:
    from failcore.dlp.scanner import DlpScanner
    from failcore.evidence.quoted import Echoes

# The record attribute (set with `extra=`) holding the echoes of a flow's credentials to mask.
LOG_ECHOES: Final = "failcore_echoes"

WITHHELD: Final = "[withheld from the log: the DLP rules could not scan it]"

# How long one of failcore's records waits for DLP rules still compiling (the interim engine takes a
# fraction of this). mitmproxy's, which come with traffic, never wait: their quoted part is withheld.
COMPILE_WAIT_SECONDS: Final = 2.0

# How many of mitmproxy's masked lines are kept, as shown, for when they come again.
SHOWN_KEPT: Final = 1024

# Where mitmproxy's protocol layers log (commands.Log goes through mitmproxy.proxy.server's logger).
MITMPROXY_LOGGERS: Final = ("mitmproxy.proxy.server",)

# mitmproxy 12.x messages that quote what a client or a server sent (read in its source):
# - proxy/layers/http/_http1.py: a request head it could not read, after the client's address
#   ("127.0.0.1:50000: Bad HTTP request line: b'…'", "…: Invalid header line: b'…'", "…: Unknown HTTP
#   version: b'…'"; http1/read.py); "Client closed connection before completing request headers: b'…'";
#   "Unexpected data from server: b'…'";
# - proxy/layers/http/_upstream_proxy.py: the upstream proxy's answer ("{address}: Bad HTTP response
#   line: b'…'");
# - proxy/layers/modes.py: "Client closed connection before completing SOCKS5 handshake: b'…'";
# - proxy/layers/websocket.py: a close or ping's payload, an unknown extension's name;
# - proxy/layers/tls.py: the handshake failures and "Unable to establish TLS …", which name the SNI;
# - proxy/layers/dns.py: "… sent an invalid message: …";
# - proxy/server.py and proxy/layers/http: the server's address ("server connect host:port",
#   "server disconnect …", "error establishing server connection: …", "Streaming request to host.").
# Any other message of that logger that quotes bytes (a bytes repr) is masked too.
MITMPROXY_QUOTING: Final = (
    "Bad HTTP re",
    "Invalid header",
    "Unknown HTTP version",
    "Client closed connection before",
    "Unexpected data from",
    "Received WebSocket",
    "Ignoring unknown WebSocket",
    "Client TLS handshake",
    "Server TLS handshake",
    "Unable to establish",
    "TLS Error",
    "server connect ",
    "server disconnect ",
    "error establishing server connection",
    "Streaming re",
)


# Its lines of every connection, which quote nothing: passed at the cost of one look-up.
MITMPROXY_PLAIN: Final = frozenset({"client connect", "client disconnect", "client kill connection"})


def _kind_at(message: str) -> int | None:
    """Where in a mitmproxy message one of the MITMPROXY_QUOTING kinds starts (0, or after an address
    and ": ", as a request head it could not read is logged), or None. (str.startswith: a regular
    expression of these costs several times more, on every line.)"""
    if message.startswith(MITMPROXY_QUOTING):
        return 0
    head, colon, rest = message.partition(": ")
    if not colon or " " in head or not rest.startswith(MITMPROXY_QUOTING):
        return None
    return len(head) + 2


def _kind(message: str, at: int) -> str:
    """The message up to the end of its kind's words."""
    return next((message[: at + len(k)] for k in MITMPROXY_QUOTING if message.startswith(k, at)), "")


def _quotes_bytes(message: str) -> bool:
    return "b'" in message or 'b"' in message or " sent an invalid message: " in message


def loggable(
    value: object, scanner: DlpScanner | None, echoes: Echoes = None, *, keep_newlines: bool = False
) -> str:
    """`value` as text, with every DLP hit and every echoed credential masked (as an event's quoted
    strings are, failcore.evidence.quoted), then its control characters escaped. `scanner` must be
    usable (see LogMask)."""
    text = str(value)
    if scanner is not None:
        text = masked_prose(scanner, text, echoes)[0]
    elif echoes is not None:
        text = mask_echoes(utf8_bytes(text), list(echoes[0]), echoes[1]).decode("utf-8", "replace")
    return printable(text, keep_newlines=keep_newlines)


def _usable(scanner: DlpScanner | None, wait: float) -> bool:
    """Whether `scanner` can scan now, waiting up to `wait` seconds for DLP rules that compile. Never
    waits on the compile's own threads (their messages are about the policy's rules)."""
    engine = scanner.engine if scanner is not None else None
    if not isinstance(engine, PendingEngine) or engine.ready:
        return True
    if not wait or threading.current_thread().name.startswith("failcore-dlp"):
        return False
    return engine.usable(wait)


def _indented(text: str, *, first: bool = False) -> str:
    """Every line of `text` after the first (and the first too with `first`) indented: a newline in
    quoted text (a policy's problems, a traceback) stays one, but cannot start a line that reads as
    another log record."""
    text = text.replace("\n", "\n  ")
    return f"  {text}" if first else text


class LogMask(logging.Filter):
    """See the module's docstring. `scanner` returns the active policy's DLP scanner (or None)."""

    def __init__(self, scanner: Callable[[], DlpScanner | None]) -> None:
        super().__init__()
        self.scanner = scanner
        self.loggers: list[logging.Logger] = []
        self._inside = threading.local()
        # mitmproxy's lines as shown, by the scanner that masked them.
        self._shown: dict[str, str] = {}
        self._shown_by: DlpScanner | None = None

    def install(self) -> None:
        """On failcore's loggers (those imported so far: every failcore module is by `load`) and
        mitmproxy's proxy server logger."""
        names = ["failcore", *MITMPROXY_LOGGERS]
        names += [name for name in list(logging.root.manager.loggerDict) if name.startswith("failcore.")]
        for name in dict.fromkeys(names):
            logger = logging.getLogger(name)
            # One mask per logger, the last loaded addon's: one left by an addon that was never
            # `done` (an embedder's, a test's) would otherwise mask first with its own, stale policy
            # and leave the record formatted, so this one would see nothing left to mask.
            for other in [f for f in logger.filters if isinstance(f, LogMask) and f is not self]:
                logger.removeFilter(other)
            logger.addFilter(self)
            self.loggers.append(logger)

    def uninstall(self) -> None:
        for logger in self.loggers:
            logger.removeFilter(self)
        self.loggers.clear()

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name == "failcore" or name.startswith("failcore."):
            if record.args or record.exc_info:
                self._masked(record, self._mask_failcore)
        elif (
            isinstance(msg := record.msg, str)
            and msg not in MITMPROXY_PLAIN
            and (_kind_at(msg) is not None or _quotes_bytes(msg))
        ):
            self._masked(record, self._mask_whole)
        return True

    def _masked(self, record: logging.LogRecord, mask: Callable[[logging.LogRecord], None]) -> None:
        if getattr(self._inside, "active", False):
            return  # a line logged while masking another (a compile error): as it is
        self._inside.active = True
        try:
            mask(record)
        except Exception:  # a log line must never take its caller down: shown withheld instead
            record.msg, record.args, record.exc_info, record.exc_text = WITHHELD, None, None, None
        finally:
            self._inside.active = False

    def _scanner(self, wait: float) -> tuple[DlpScanner | None, bool]:
        scanner = self.scanner()
        return scanner, _usable(scanner, wait)

    def _mask_failcore(self, record: logging.LogRecord) -> None:
        scanner, usable = self._scanner(COMPILE_WAIT_SECONDS)
        echoes = getattr(record, LOG_ECHOES, None)

        def shown(value: object) -> object:
            if isinstance(value, int | float):  # (bool too) a number quotes nothing; keeps `%d` working
                return value
            return _indented(loggable(value, scanner, echoes, keep_newlines=True)) if usable else WITHHELD

        args = record.args
        if isinstance(args, Mapping):
            message = record.msg % {key: shown(value) for key, value in args.items()}
        elif args:
            message = record.msg % tuple(shown(value) for value in args)
        else:
            message = str(record.msg)
        if record.exc_info:
            trace = logging.Formatter().formatException(record.exc_info)
            shown_trace = loggable(trace, scanner, echoes, keep_newlines=True) if usable else WITHHELD
            message = f"{message}\n{_indented(shown_trace, first=True)}"
        # Formatted here: a handler's formatter (mitmproxy's formats exc_info itself) sees the result only.
        record.msg, record.args, record.exc_info, record.exc_text = message, None, None, None

    def _mask_whole(self, record: logging.LogRecord) -> None:
        scanner, usable = self._scanner(0)
        message = record.getMessage()
        if not usable:  # what names the message's kind is kept
            at = _kind_at(message)
            kind = printable(_kind(message, at)) if at is not None else ""
            record.msg, record.args = kind + WITHHELD, None
            return
        # The same lines come again and again ("server connect api.openai.com:443"): shown as before
        # (by the same scanner: a policy reload starts afresh).
        if scanner is not self._shown_by or len(self._shown) >= SHOWN_KEPT:
            self._shown, self._shown_by = {}, scanner
        shown = self._shown.get(message)
        if shown is None:
            shown = self._shown[message] = loggable(message, scanner)
        record.msg, record.args = shown, None
