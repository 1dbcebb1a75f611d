"""What the transfer-coding attacks on failcore's body readers share: a request or response body under
`Transfer-Encoding: gzip, chunked` written byte for byte, and a plain-HTTP upstream that reads such a
request (undoes its chunked framing, as aiohttp and node's http do) and keeps every byte it received."""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import zlib
from types import TracebackType
from typing import Self

from tests.security.helpers import read_head, read_until_closed


def _compress_like(body: bytes) -> bytes:
    """`compress` (LZW) that failcore cannot decode: the magic, then bytes that are not LZW (read as
    9-bit codes, a JSON body names an entry past the table within its first few codes; mitmproxy does
    not look)."""
    return b"\x1f\x9d\x90" + body


CODERS = {"gzip": gzip.compress, "deflate": zlib.compress, "compress": _compress_like}


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"


def transfer_coded_request(
    authority: str, path: str, coding: str, body: bytes, content_type: str, *, close: bool = True
) -> bytes:
    """An absolute-form POST whose `body` is coded by `coding` as a transfer coding (`<coding>,
    chunked`): mitmproxy undoes only the chunked framing and forwards the coded bytes."""
    head = (
        f"POST http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: {content_type}\r\n"
        f"Transfer-Encoding: {coding}, chunked\r\n"
    )
    end = "Connection: close\r\n" if close else ""
    return f"{head}{end}\r\n".encode() + chunked(CODERS[coding](body))


def transfer_coded_answer(content_type: str, body: bytes, coding: str = "gzip") -> bytes:
    """A 200 whose `body` is coded by `coding` as a transfer coding (`<coding>, chunked`)."""
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: {coding}, chunked\r\n"
    return f"{head}Connection: close\r\n\r\n".encode() + chunked(CODERS[coding](body))


def through_proxy(proxy_port: int, request: bytes) -> bytes:
    """One hand-written request to the proxy; its whole answer (read until the connection closes)."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=30) as s:
        s.sendall(request)
        return read_until_closed(s, 1 << 22)


class RawUpstream:
    """A plain-HTTP upstream: each connection's request is read (a Content-Length body, or a chunked one
    up to its last chunk) and kept as received, and answered with `answer` (its connection closed)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.received: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.authority = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self._serve, daemon=True, name=f"raw-upstream-{self.port}")

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.sock.close()

    def received_bytes(self) -> bytes:
        return b"".join(self.received)

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                with conn:
                    conn.settimeout(30)
                    self.received.append(_read_request(conn))
                    conn.sendall(self.answer)


def _read_request(conn: socket.socket) -> bytes:
    data = read_head(conn)
    head = data.partition(b"\r\n\r\n")[0].lower()
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            length = int(value)
    chunked_body = b"transfer-encoding:" in head
    with contextlib.suppress(OSError):
        while True:
            body = data.partition(b"\r\n\r\n")[2]
            if (chunked_body and body.endswith(b"0\r\n\r\n")) or (not chunked_body and len(body) >= length):
                break
            more = conn.recv(65536)
            if not more:
                break
            data += more
    return data
