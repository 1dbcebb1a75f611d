"""Run mitmproxy with failcore's addons inside this process (for `failcore proxy`, `run`, `sample`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mitmproxy import exceptions, options
from mitmproxy.tools.dump import DumpMaster

from failcore.ca import CaInfo, ensure_ca
from failcore.proxy import make_addons
from failcore.proxy.session import Session
from failcore.shipped import default_policy_path


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


class EmbeddedProxy:
    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.session = Session()
        self.master: DumpMaster | None = None
        self.ca: CaInfo | None = None
        self._task: asyncio.Task[None] | None = None
        self.credential: str | None = f"failcore:{secrets.token_urlsafe(24)}" if settings.proxy_auth else None

    async def start(self, timeout: float = 15.0) -> None:
        s = self.settings
        self.ca = ensure_ca(s.confdir)
        opts = options.Options()
        master = DumpMaster(opts, with_termlog=True, with_dumper=False)
        master.addons.add(*make_addons(self.session))
        updates: dict[str, Any] = {
            "listen_host": s.listen_host,
            "listen_port": s.listen_port,
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
        self._task = asyncio.get_running_loop().create_task(master.run())
        proxyserver = master.addons.get("proxyserver")
        deadline = asyncio.get_running_loop().time() + timeout
        while not (proxyserver.is_running and proxyserver.listen_addrs()):
            if self._task.done():
                exc = self._task.exception()
                raise ProxyStartError(f"proxy stopped during start-up: {exc or 'see messages above'}")
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise ProxyStartError("proxy did not start listening in time")
            await asyncio.sleep(0.02)

    @property
    def address(self) -> tuple[str, int]:
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
        assert self.master is not None
        from failcore.paths import default_tape_dir

        return Path(self.master.options.failcore_tape or default_tape_dir()).expanduser()

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


def quiet_mitmproxy_logs() -> None:
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)
