"""Where the proxy listens: 127.0.0.1 unless the user asks for more, and a record when they do.

mitmproxy listens on every interface when `listen_host` is empty, its default. Under
`mitmdump -s addons/failcore_addon.py` the script is loaded by a task that runs only after mitmproxy
has already bound its servers, so setting the option when the addon loads is not enough: the servers
that listen on a wildcard address because of the default are restarted on 127.0.0.1 as soon as the
addon runs, and until then (and for connections accepted in that window) a client that is not on
this host is refused by `client_connected`. A listen address the user chose (`--set listen_host=…`,
`--listen-host`, `--mode regular@HOST:PORT`) is kept, logged as a warning and recorded on the tape.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any

from mitmproxy import connection, ctx

from failcore.event import EgressEvent
from failcore.proxy.session import Session

logger = logging.getLogger("failcore")

LOOPBACK = "127.0.0.1"


def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "*")


def is_loopback(host: str) -> bool:
    """Whether a peer or listen address is this host's loopback (IPv4-mapped IPv6 included)."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0].strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class ListenGuard:
    """Loopback by default, for every way mitmproxy can be started."""

    def __init__(self, session: Session) -> None:
        self.session = session
        # True once an empty listen_host was replaced by ours: other hosts are then refused.
        self.defaulted = False

    def configure(self, updated: set[str]) -> None:
        if "listen_host" in updated and ctx.options.listen_host == "":
            self.defaulted = True
            ctx.options.listen_host = LOOPBACK
            logger.info("failcore: listening on 127.0.0.1 (set listen_host to change)")

    def client_connected(self, client: connection.Client) -> None:
        if not self.defaulted or not client.peername:
            return
        if self._mode_listens_wide(client) or is_loopback(str(client.peername[0])):
            return
        # Accepted by a socket bound before the addon could move it to loopback.
        client.error = "failcore: refused a client that is not on this host (listen_host not set)"
        logger.warning(
            "failcore: refused a connection from %s: failcore listens on 127.0.0.1", client.peername[0]
        )

    @staticmethod
    def _mode_listens_wide(client: connection.Client) -> bool:
        host = getattr(client.proxy_mode, "custom_listen_host", None)
        return host is not None and not is_loopback(host)

    async def running(self) -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        if proxyserver is None:
            return
        for server in list(proxyserver.servers):
            custom = server.mode.custom_listen_host
            wide = [a for a in server.listen_addrs if not is_loopback(str(a[0]))]
            if not wide:
                continue
            if custom is None and ctx.options.listen_host == LOOPBACK:
                # Bound before this addon set listen_host: rebind on loopback.
                await server.stop()
                await server.start()
                continue
            self._record_exposed(server.mode.full_spec, [f"{a[0]}:{a[1]}" for a in server.listen_addrs])

    def _record_exposed(self, mode: str, addresses: list[str]) -> None:
        # Info, not warning: mitmdump shows it, while `failcore proxy --json` keeps stdout pure JSON
        # (its termlog shows warnings on stdout); the tape has the event either way.
        logger.info(
            "failcore: proxy mode %s listens on %s, beyond this host: anyone who can reach it can send "
            "traffic through it and write into the tape",
            mode,
            ", ".join(addresses),
        )
        detail: dict[str, Any] = {"mode": mode, "addresses": addresses, "exposed": True}
        event = EgressEvent(kind="listen", run=self.session.run_id, ts_start=time.time(), detail=detail)
        self.session.record(event.to_dict())
