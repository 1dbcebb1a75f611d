"""A Realtime-API-shaped WebSocket session through the proxy, for the realtime budget attacks: the
messages a client sends (`response.create`) and the `response.done` a server answers with (their shape
from OpenAI's API reference). The logging upstream echoes each message back, so a `response.done` the
client sends returns from the server."""

from __future__ import annotations

import json
import socket

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from tests.security.helpers import read_head
from tests.security.upstream import LoggingUpstream

REALTIME = "/v1/realtime?model=gpt-4o-realtime-preview"
CREATE = json.dumps({"type": "response.create", "response": {"instructions": "write 4000 tokens"}})


def upgrade_answer(proxy_port: int, upstream: LoggingUpstream, path: str) -> bytes:
    """The head of the proxy's answer to a WebSocket upgrade of `path` on `upstream` (absolute form,
    written byte for byte)."""
    authority = f"127.0.0.1:{upstream.port}"
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=30) as s:
        s.sendall(
            f"GET http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
        )
        return read_head(s)


def done(tokens: int) -> str:
    usage = {"total_tokens": tokens, "input_tokens": tokens // 2, "output_tokens": tokens - tokens // 2}
    return json.dumps(
        {"type": "response.done", "response": {"id": "resp_1", "status": "completed", "usage": usage}}
    )


class Session:
    """A ws:// session through the proxy to the plain upstream (absolute-form upgrade)."""

    def __init__(self, proxy_port: int, upstream: LoggingUpstream, target: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
        self.ws = WSConnection(ConnectionType.CLIENT)
        upgrade = self.ws.send(Request(host=f"127.0.0.1:{upstream.port}", target=target))
        line, _, rest = upgrade.partition(b" ")
        target_abs = f"http://127.0.0.1:{upstream.port}".encode()
        self.sock.sendall(line + b" " + target_abs + rest)
        self._wait(lambda e: isinstance(e, AcceptConnection))

    def _wait(self, done) -> list[str]:  # type: ignore[no-untyped-def]
        texts: list[str] = []
        while True:
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    texts.append(event.data)
                if done(event):
                    return texts
            data = self.sock.recv(65536)
            if not data:
                return texts
            self.ws.receive_data(data)

    def send(self, text: str) -> None:
        self.sock.sendall(self.ws.send(TextMessage(data=text)))

    def echo(self, text: str) -> list[str]:
        """Send `text` and read until it comes back."""
        self.send(text)
        return self._wait(lambda e: isinstance(e, TextMessage) and e.data == text)

    def close(self) -> None:
        self.sock.close()
