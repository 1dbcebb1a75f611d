"""Run mitmproxy with failcore's addons inside this process (for `failcore proxy`, `run`, `sample`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from failcore.runmarks import new_run_id

# mitmproxy and failcore's addons are imported in start(): `failcore run` binds its socket and starts
# the command while they load (failcore.quickstart).
if TYPE_CHECKING:
    from mitmproxy.tools.dump import DumpMaster

    from failcore.ca import CaInfo
    from failcore.proxy.session import Session


class ProxyStartError(Exception):
    """The proxy could not start: invalid option or policy, port in use, …"""


@dataclass(slots=True)
class ProxySettings:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    modes: Sequence[str] = ("regular",)
    policy: str | None = None
    tape: str | None = None
    policy_mode: str | None = None
    run_id: str | None = None
    confdir: Path | None = None
    sets: Sequence[str] = ()
    quiet: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    # A random per-run credential for mitmproxy's `proxyauth`: clients must present it (client_url).
    proxy_auth: bool = False
    # A socket already bound and listening (failcore.quickstart): the regular mode serves on it instead
    # of binding its own, so connections made before the proxy started wait in its backlog.
    listen_socket: socket.socket | None = None


class EmbeddedProxy:
    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.run_id = settings.run_id or new_run_id()
        self._session: Session | None = None
        self.master: DumpMaster | None = None
        self.ca: CaInfo | None = None
        self._task: asyncio.Task[None] | None = None
        self.credential: str | None = f"failcore:{secrets.token_urlsafe(24)}" if settings.proxy_auth else None

    @property
    def session(self) -> Session:
        if self._session is None:
            from failcore.proxy.session import Session

            self._session = Session(run_id=self.run_id)
        return self._session

    async def start(self, timeout: float = 15.0) -> None:
        from mitmproxy import exceptions, options
        from mitmproxy.addons.termlog import TermLog
        from mitmproxy.tools.dump import DumpMaster

        from failcore.ca import ensure_ca
        from failcore.proxy import make_addons
        from failcore.shipped import default_policy_path

        s = self.settings
        if self.ca is None:
            self.ca = ensure_ca(s.confdir)
        opts = options.Options()
        master = DumpMaster(opts, with_termlog=False, with_dumper=False)
        started = _Started()
        # Messages go to stderr: stdout is the command's own (`failcore run --json` prints JSON there).
        # _Started last: its running hook fires once mitmproxy has set up its servers and every other
        # addon is running.
        master.addons.add(TermLog(out=sys.stderr), *make_addons(self.session), started)
        listen_host, listen_port = s.listen_host, s.listen_port
        if s.listen_socket is not None:
            listen_host, listen_port = s.listen_socket.getsockname()[:2]
            master.addons.get("proxyserver").servers.changed.connect(self._adopt_socket)
        updates: dict[str, Any] = {
            "listen_host": listen_host,
            "listen_port": listen_port,
            "mode": list(s.modes),
            "confdir": str(self.ca.confdir),
            "termlog_verbosity": "warn" if s.quiet else "info",
        }
        # Always named, so a broken policy (even the default) stops start-up with its error.
        updates["failcore_policy"] = s.policy or str(default_policy_path())
        if s.tape:
            updates["failcore_tape"] = s.tape
        if s.policy_mode:
            updates["failcore_mode"] = s.policy_mode
        if s.run_id:
            updates["failcore_run_id"] = s.run_id
        if self.credential:
            updates["proxyauth"] = self.credential
        updates.update(s.extra)
        try:
            opts.update(**updates)
            if s.sets:
                opts.set(*s.sets)
        except exceptions.OptionsError as e:
            raise ProxyStartError(str(e)) from None
        self.master = master
        # mitmproxy's own check exits the process on an error logged during start-up (a Rust backtrace
        # and a segfault for local capture mode); failcore stops and says what failed instead.
        if (errorcheck := master.addons.get("errorcheck")) is not None:
            errorcheck.shutdown_if_errored = _report_instead_of_exit
        with StartupErrors(hide=s.quiet) as errors:
            self._task = asyncio.get_running_loop().create_task(master.run())
            await self._wait_started(errors, started, timeout)

    def _adopt_socket(self) -> None:
        """Before mitmproxy starts its servers (Servers.changed fires between making and starting
        them): the regular mode's server listens on settings.listen_socket instead of binding."""
        sock = self.settings.listen_socket
        assert self.master is not None and sock is not None
        for instance in self.master.addons.get("proxyserver").servers:
            if instance.mode.type_name == "regular" and not instance.is_running:
                instance.listen = functools.partial(_serve_on, instance, sock)

    async def _wait_started(self, errors: StartupErrors, started: _Started, timeout: float) -> None:
        """Event-driven: wakes when mitmproxy runs, when an error is logged or when the master stops."""
        assert self.master is not None and self._task is not None
        proxyserver = self.master.addons.get("proxyserver")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        local = any(str(m).startswith("local") for m in self.settings.modes)
        settled: float | None = None
        errors.notify = loop
        while True:
            if errors.records and not proxyserver.servers.is_updating:
                await self.stop(drain=0.0)
                raise ProxyStartError(startup_message(errors.records, self.settings.modes, errors.redirector))
            if started.event.is_set():
                if not local:
                    return
                settled = settled or loop.time() + REDIRECTOR_SETTLE_S
                if loop.time() >= settled:
                    return
            if self._task.done():
                exc = self._task.exception()
                raise ProxyStartError(f"proxy stopped during start-up: {exc or 'see messages above'}")
            if loop.time() > deadline:
                await self.stop(drain=0.0)
                raise ProxyStartError(
                    f"proxy did not start within {timeout:.0f} s" + _mode_hint(self.settings.modes)
                )
            errors.changed.clear()
            wakers = [
                loop.create_task(started.event.wait()),
                loop.create_task(errors.changed.wait()),
            ]
            until = min(deadline, settled) if settled is not None else deadline
            try:
                timeout_s = max(0.0, until - loop.time())
                await asyncio.wait(
                    [*wakers, self._task], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waker in wakers:
                    waker.cancel()

    @property
    def listening(self) -> bool:
        """False when every mode captures without a listening socket (local capture)."""
        return bool(self.master and self.master.addons.get("proxyserver").listen_addrs())

    @property
    def address(self) -> tuple[str, int]:
        if self.master is None and self.settings.listen_socket is not None:  # bound, not yet serving
            host, port, *_ = self.settings.listen_socket.getsockname()
            return host, port
        assert self.master is not None
        host, port, *_ = self.master.addons.get("proxyserver").listen_addrs()[0]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    @property
    def client_url(self) -> str:
        """The proxy URL a client uses: with the per-run credential when proxy_auth is on."""
        host, port = self.address
        return f"http://{self.credential + '@' if self.credential else ''}{host}:{port}"

    @property
    def tape_dir(self) -> Path:
        from failcore.paths import default_tape_dir

        tape = self.master.options.failcore_tape if self.master is not None else self.settings.tape
        return Path(tape or default_tape_dir()).expanduser()

    async def wait(self) -> None:
        if self._task is not None:
            await self._task

    async def stop(self, drain: float = 5.0) -> None:
        """Stop after the exchanges in flight finish (at most `drain` seconds); any still open then
        are recorded as killed. A client can have read a streamed response whole before the proxy's
        last hook for it ran: stopping at once would drop that exchange from the tape."""
        if self.master is None or self._task is None:
            return
        recorder = self.master.addons.get("failcore").recorder
        deadline = asyncio.get_running_loop().time() + drain
        while recorder.pending_exchanges() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        task = self._task
        if task is None:  # a second stop() (a second Ctrl-C) finished first
            return
        self.master.shutdown()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._task = None


async def _serve_on(instance: Any, sock: socket.socket, host: str, port: int) -> list[asyncio.Server]:
    # Stands in for AsyncioServerInstance.listen(host, port): the same asyncio server, on a bound socket.
    return [await asyncio.start_server(instance.handle_stream, sock=sock)]


class _Started:
    """Its running hook says mitmproxy has set up its servers (or logged why it could not)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def running(self) -> None:
        self.event.set()


REDIRECTOR_LOGGER = "mitmproxy.packet_sources"
# Local capture has no listening socket whose bind says "ready": its redirector (a sudo'ed subprocess)
# reports a failure shortly after mitmproxy calls the mode started. Errors within this window stop
# the start; the window is only waited for local modes.
REDIRECTOR_SETTLE_S = 3.0


async def _report_instead_of_exit() -> None:
    """Stands in for mitmproxy's ErrorCheck.shutdown_if_errored (sys.exit on any error logged during
    start-up): EmbeddedProxy.start reports those errors itself and stops the proxy."""


class StartupErrors(logging.Handler):
    """Errors logged while the proxy starts, kept for one message, and what local capture's redirector
    printed (it arrives line by line as warnings). With `hide`, both are kept from mitmproxy's terminal
    log too: a redirector's failure comes with a Rust backtrace and pages of BTF dump."""

    def __init__(self, *, hide: bool) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.redirector: list[str] = []
        self.hide = hide
        self._hidden_on: list[logging.Handler] = []
        # Set (on `notify`, the waiting loop) whenever an error is kept: wakes the start-up wait.
        self.changed = asyncio.Event()
        self.notify: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(REDIRECTOR_LOGGER) and record.levelno < logging.ERROR:
            if len(self.redirector) < 10_000:
                self.redirector.append(record.getMessage())
        elif record.levelno >= logging.ERROR:
            self.records.append(record)
            if self.notify is not None and not self.notify.is_closed():
                self.notify.call_soon_threadsafe(self.changed.set)

    def _shown(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING or (
            record.levelno < logging.ERROR and not record.name.startswith(REDIRECTOR_LOGGER)
        )

    def __enter__(self) -> StartupErrors:
        root = logging.getLogger()
        if self.hide:
            for handler in root.handlers:
                handler.addFilter(self._shown)
                self._hidden_on.append(handler)
        root.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)
        for handler in self._hidden_on:
            handler.removeFilter(self._shown)
        self._hidden_on.clear()


def _cause_chain(lines: Sequence[str]) -> list[str]:
    """From a Rust error report (`Error: …`, `Caused by:`, numbered causes, `Stack backtrace:`), the
    error and its causes; everything else (BTF dumps, the backtrace) is left out."""
    for i, line in enumerate(lines):
        if line.startswith("Error:"):
            out = [line]
            for more in lines[i + 1 :]:
                if more.startswith("Stack backtrace"):
                    break
                if more.strip():
                    out.append(more.rstrip())
            return out[:12]
    return []


def startup_message(
    records: Sequence[logging.LogRecord], modes: Sequence[str], redirector: Sequence[str] = ()
) -> str:
    """What failed, in a few lines: backtraces and long dumps cut, then what to try."""
    parts = []
    for record in records[:3]:
        text = record.getMessage().split("Stack backtrace:", 1)[0]
        lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
        if len(lines) > 8:
            lines = [*lines[:4], f"  … ({len(lines) - 7} more lines; -v shows them)", *lines[-3:]]
        parts.append("\n".join(lines))
    if chain := _cause_chain(redirector):
        parts.append("the redirector said:\n  " + "\n  ".join(chain))
    return "proxy could not start: " + "\n".join(parts) + _mode_hint(modes)


def _mode_hint(modes: Sequence[str]) -> str:
    if any(str(m).startswith("local") for m in modes):
        return (
            "\nLocal capture mode runs mitmproxy's redirector with sudo (on Linux an eBPF program: root, "
            "sudo on PATH and a kernel with BTF). Instead: `failcore run --contain -- CMD` (Linux, root, "
            "iproute2 + iptables) or `failcore run -- CMD` (clients that honour HTTPS_PROXY)."
        )
    return ""


def quiet_mitmproxy_logs() -> None:
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)
