"""Which name each address a guarded call connects to came from, for the audit hook's connect checks:
socket.getaddrinfo is wrapped (`wrap_getaddrinfo`) to remember the answers.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any, Final

from failcore.policy.address import canonical_ip

# Which name each address came from (socket.getaddrinfo, wrapped by install()): a connection is judged
# with the name only when the name resolved to that very address (not the last name this thread asked
# for, which would lend an allowed name to any address connected to next). asyncio resolves on another
# thread than it connects on: kept for the process, the latest RESOLVED_KEPT addresses, forgotten when
# a run opens (a name resolved before it, by the application or an earlier run, names nothing in it).
RESOLVED_KEPT: Final = 1024
resolved: dict[str, str] = {}


def forget_names() -> None:
    resolved.clear()


def _remember(host: Any, results: Any) -> None:
    if isinstance(host, bytes):
        host = host.decode("idna", "replace")
    if not isinstance(host, str) or canonical_ip(host) is not None:
        return
    for *_, sockaddr in results:
        address = str(sockaddr[0])
        resolved.pop(address, None)
        resolved[address] = host
    while len(resolved) > RESOLVED_KEPT:
        try:
            del resolved[next(iter(resolved))]
        except (KeyError, RuntimeError, StopIteration):  # another thread changed it meanwhile
            break


def wrap_getaddrinfo() -> None:
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
