"""Whether a socket has something to read right now (a connection waiting in a listen backlog).

`select.select` refuses a file descriptor of FD_SETSIZE (1024) or more, which a process with many
connections open (a proxy, an agent's run) reaches: `selectors` (epoll, kqueue, poll) has no such
limit.
"""

from __future__ import annotations

import selectors
from typing import Protocol


class HasFileno(Protocol):
    def fileno(self) -> int: ...


def readable_now(sock: HasFileno) -> bool:
    """`sock` (a socket, an asyncio server's TransportSocket) can be read without waiting."""
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(0))
