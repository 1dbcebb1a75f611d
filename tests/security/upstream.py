"""A logging upstream for the attack tests: it keeps every byte it receives, as it receives it.

The stand-in answers like a provider; this one exists to answer one question per attack: *what reached
the other side?* Each accepted connection is kept as a `Received` record (decrypted bytes, TLS SNI),
whatever the protocol:

* HTTP/1.1 (h11): every request is answered 200 with a small JSON body (or `respond_with`);
* WebSocket upgrades (wsproto): every message is echoed back (and kept, unmasked, in `ws_messages`);
  `ws_greeting` messages are sent first, right after the upgrade;
* anything else (raw TCP): bytes are echoed back as they come.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Ping, Request, TextMessage

from failcore.demo.certs import generate_certificate

_HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"HEAD ", b"OPTIONS ")


@dataclass
class Received:
    sni: str | None = None
    data: bytearray = field(default_factory=bytearray)
    kind: str = "unknown"  # http, websocket, raw


class LoggingUpstream:
    """`with LoggingUpstream(workdir) as up: ... up.received_bytes()`; `tls=False` for plain TCP."""

    def __init__(self, workdir: Path, *, tls: bool = True, host: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.tls = tls
        self.host = host
        self.port = 0
        self.connections: list[Received] = []
        self.respond_with: tuple[int, list[tuple[bytes, bytes]], bytes] = (
            200,
            [(b"content-type", b"application/json")],
            b'{"ok": true}',
        )
        self.ws_messages: list[str | bytes] = []
        self.ws_greeting: list[str] = []
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._context: ssl.SSLContext | None = None
        self._threads: list[threading.Thread] = []
        self.ca_path: Path | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Self:
        if self.tls:
            self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
            cert = generate_certificate(self.workdir, self.host)
            self.ca_path = cert.cert_path
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert.cert_path, cert.key_path)
            ctx.set_alpn_protocols(["http/1.1"])
            ctx.sni_callback = self._on_sni
            self._context = ctx
        self._sock = socket.create_server((self.host, 0))
        self.port = self._sock.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, daemon=True, name=f"logging-upstream-{self.port}")
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    # -- what arrived --------------------------------------------------------------------------------

    def received_bytes(self) -> bytes:
        with self._lock:
            return b"".join(bytes(c.data) for c in self.connections)

    def snis(self) -> list[str | None]:
        with self._lock:
            return [c.sni for c in self.connections]

    def reset(self) -> None:
        with self._lock:
            self.connections.clear()

    # -- serving -----------------------------------------------------------------------------------

    def _on_sni(self, sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        # Recorded during the handshake, before this side answers: once the client has seen a
        # ServerHello (and, say, refused the certificate), the name is in `snis()`.
        record = getattr(sslobj, "failcore_record", None)
        if record is not None:
            record.sni = name

    def _accept_loop(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        record = Received()
        with self._lock:
            self.connections.append(record)
        try:
            if self._context is not None:
                tls = self._context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                # The SNI callback is handed the SSLSocket itself (an SSLObject only for memory BIOs);
                # it records the name even when the client then gives up on the handshake.
                tls.failcore_record = record  # type: ignore[attr-defined]
                tls.do_handshake()
                conn = tls
            conn.settimeout(30)
            first = self._recv(conn, record)
            if not first:
                return
            if first.startswith(_HTTP_METHODS):
                head = first
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    more = self._recv(conn, record)
                    if not more:
                        break
                    head += more
                if b"upgrade: websocket" in head.lower():
                    record.kind = "websocket"
                    self._serve_websocket(conn, record, head)
                else:
                    record.kind = "http"
                    self._serve_http(conn, record, head)
            else:
                record.kind = "raw"
                conn.sendall(first)
                while data := self._recv(conn, record):
                    conn.sendall(data)
        except (OSError, ssl.SSLError, h11.ProtocolError):
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _recv(self, conn: socket.socket, record: Received) -> bytes:
        data = conn.recv(65536)
        with self._lock:
            record.data += data
        return data

    def _serve_http(self, conn: socket.socket, record: Received, first: bytes) -> None:
        h = h11.Connection(h11.SERVER)
        h.receive_data(first)
        while True:
            event = h.next_event()
            if event is h11.NEED_DATA:
                h.receive_data(self._recv(conn, record))
                continue
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                if event is h11.PAUSED and h.our_state is h11.DONE and h.their_state is h11.DONE:
                    h.start_next_cycle()
                    continue
                return
            if isinstance(event, h11.EndOfMessage):
                status, headers, body = self.respond_with
                out = h.send(
                    h11.Response(
                        status_code=status, headers=[*headers, (b"content-length", b"%d" % len(body))]
                    )
                )
                out += h.send(h11.Data(data=body)) + h.send(h11.EndOfMessage())
                conn.sendall(out)
                if h.our_state is h11.MUST_CLOSE:
                    return
                h.start_next_cycle()

    def _serve_websocket(self, conn: socket.socket, record: Received, first: bytes) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(first)
        while True:
            for event in ws.events():
                if isinstance(event, Request):
                    conn.sendall(ws.send(AcceptConnection()))
                    for greeting in self.ws_greeting:
                        conn.sendall(ws.send(TextMessage(data=greeting)))
                elif isinstance(event, TextMessage | BytesMessage):
                    with self._lock:
                        self.ws_messages.append(event.data)
                    conn.sendall(ws.send(type(event)(data=event.data)))
                elif isinstance(event, Ping):
                    conn.sendall(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    conn.sendall(ws.send(event.response()))
                    return
            data = self._recv(conn, record)
            if not data:
                return
            ws.receive_data(data)


class EncodedStreamServer:
    """Plain-HTTP upstream answering with a chunked, gzip-encoded event stream: `pieces` are sent as
    HTTP chunks 0.2 s apart (so each reaches the proxy on its own)."""

    def __init__(self, pieces: list[bytes], encoding: str = "gzip") -> None:
        self.pieces = pieces
        self.encoding = encoding
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn, contextlib.suppress(OSError):  # a cut closes the connection: expected
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Content-Encoding: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % self.encoding.encode()
            )
            for piece in self.pieces:
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                time.sleep(0.2)
            conn.sendall(b"0\r\n\r\n")

    def close(self) -> None:
        self.sock.close()
