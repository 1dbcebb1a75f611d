"""`StandIn`: the stand-in's threaded HTTP(S) server on loopback, its TLS and its lifecycle."""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import socketserver
import ssl
import tempfile
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from failcore.demo.certs import CertificateFiles, generate_certificate
from failcore.demo.handler import CLIENT_GONE, Handler, RecordedRequest

log = logging.getLogger(__name__)

TLS_HANDSHAKE_TIMEOUT = 10.0


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_port = False
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], owner: StandIn, tls_context: ssl.SSLContext | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.owner = owner
        self.tls_context = tls_context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can stall offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the per-connection thread, so a slow or broken
        # client never stalls accept().
        connection: socket.socket = request
        if self.tls_context is not None:
            request.settimeout(TLS_HANDSHAKE_TIMEOUT)
            tls_connection = self.tls_context.wrap_socket(
                request, server_side=True, do_handshake_on_connect=False
            )
            try:
                tls_connection.do_handshake()
            except OSError as exc:  # ssl.SSLError is an OSError
                log.debug("stand-in TLS handshake with %s failed: %s", client_address, exc)
                tls_connection.close()
                return
            connection = tls_connection
        with self._connections_lock:
            self._connections.add(connection)
        try:
            super().finish_request(connection, client_address)
        except CLIENT_GONE:
            pass
        finally:
            with self._connections_lock:
                self._connections.discard(connection)
            if connection is not request:
                with contextlib.suppress(OSError):
                    connection.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("stand-in error while serving %s", client_address, exc_info=True)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class StandIn:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: bool = True,
        sse_gap: float = 0.0,
        workdir: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.sse_gap = sse_gap
        self._workdir = workdir
        self._owned_workdir: Path | None = None
        self._certificate: CertificateFiles | None = None
        self._server: DemoServer | None = None
        self._thread: threading.Thread | None = None
        self._requests: list[RecordedRequest] = []
        self._requests_lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("stand-in already started")
        context = self._tls_context() if self.tls else None
        self._server = DemoServer((self.host, self.port), self, context)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"standin-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._owned_workdir is not None:
            shutil.rmtree(self._owned_workdir, ignore_errors=True)
            self._owned_workdir = None
            self._certificate = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _tls_context(self) -> ssl.SSLContext:
        if self._certificate is None:
            self._certificate = generate_certificate(self._prepare_workdir(), self.host)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._certificate.cert_path, self._certificate.key_path)
        context.set_alpn_protocols(["http/1.1"])
        return context

    def _prepare_workdir(self) -> Path:
        if self._workdir is None:
            self._owned_workdir = Path(tempfile.mkdtemp(prefix="failcore-standin-"))
            return self._owned_workdir
        self._workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._workdir

    # -- addressing ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def ca_path(self) -> Path:
        if self._certificate is None:
            raise RuntimeError("no certificate: the stand-in is not started or runs without TLS")
        return self._certificate.cert_path

    # -- recording ----------------------------------------------------------------------------

    def record(self, request: RecordedRequest) -> None:
        with self._requests_lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot; the server keeps appending to its own list concurrently."""
        with self._requests_lock:
            return list(self._requests)

    def request_count(self, path_prefix: str = "") -> int:
        with self._requests_lock:
            return sum(1 for request in self._requests if request.path.startswith(path_prefix))

    def reset(self) -> None:
        with self._requests_lock:
            self._requests.clear()
