"""The stand-in's WebSocket echo (`GET /ws`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsproto import WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)


class WebSocketEcho:
    """Echo loop over an already-read upgrade request; wsproto handles handshake and framing."""

    def __init__(
        self, ws: WSConnection, receive: Callable[[int], bytes], send: Callable[[bytes], Any]
    ) -> None:
        self._ws = ws
        self._receive = receive
        self._send = send

    def run(self) -> None:
        while True:
            if not self._handle_events():
                return
            data = self._receive(65536)
            self._ws.receive_data(data or None)
            if not data:
                self._handle_events()
                return

    def _handle_events(self) -> bool:
        for event in self._ws.events():
            if isinstance(event, Request):
                self._send(self._ws.send(AcceptConnection()))
            elif isinstance(event, TextMessage):
                echoed_text = TextMessage(data=event.data, message_finished=event.message_finished)
                self._send(self._ws.send(echoed_text))
            elif isinstance(event, BytesMessage):
                echoed_bytes = BytesMessage(data=event.data, message_finished=event.message_finished)
                self._send(self._ws.send(echoed_bytes))
            elif isinstance(event, Ping):
                self._send(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self._send(self._ws.send(event.response()))
                return False
            elif isinstance(event, RejectConnection):
                return False
        return True
