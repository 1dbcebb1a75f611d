"""Serving a canned response so mitmproxy streams it with its recorded chunk boundaries: a loopback
HTTP/1.1 server (h11) that matched flows are redirected to, and a stream callable that re-cuts the
bytes reaching mitmproxy at the recorded boundaries. See the package docstring for why."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

import h11

from failcore.replay.canned import CannedResponse

logger = logging.getLogger("failcore")

TOKEN_HEADER: Final = "x-failcore-replay-token"


StreamFn = Callable[[bytes], bytes | Sequence[bytes]]


class Rechunker:
    """A response `stream` callable that cuts the bytes at the recorded chunk boundaries, whatever
    boundaries TCP gave them on the way from `ReplayServer`, and hands each chunk to the stream the
    stream tap installed (its copy for the tape, usage metering, DLP and budget cut-offs).

    Like the parts of any stream callable failcore installs, a raise here goes to `failed`
    (failcore.proxy.guard.StreamFailures.stop), never to mitmproxy: True means nothing more is
    forwarded (`fail_open: false`, the stream is cut); otherwise the bytes go on, without the recorded
    boundaries from then on but still through the inner stream (a raise there: that chunk goes on as
    it came, and the inner stream is asked about the next one)."""

    def __init__(
        self, sizes: Sequence[int], inner: StreamFn, failed: Callable[[Exception, object], bool] | None = None
    ) -> None:
        self.sizes = deque(n for n in sizes if n > 0)
        self.buffer = bytearray()
        self.inner = inner
        self.failed = failed

    def __call__(self, data: bytes) -> list[bytes]:
        try:
            out = self._cut(data)
        except Exception as e:
            if self.failed is None:
                raise
            # `_cut` commits nothing before it returns: what it held and `data` go on as one chunk.
            out = [bytes(self.buffer) + data] if self.buffer or data else []
            self.buffer.clear()
            self.sizes.clear()
            if self.failed(e, self):
                return []
        forwarded: list[bytes] = []
        for chunk in out:
            try:
                result = self.inner(chunk)
            except Exception as e:
                if self.failed is None:
                    raise
                if self.failed(e, self.inner):
                    return []
                result = chunk
            forwarded.extend([result] if isinstance(result, bytes) else result)
        return [chunk for chunk in forwarded if chunk]

    def _cut(self, data: bytes) -> list[bytes]:
        """`data` added to what is held, cut at the recorded boundaries (committed only on success)."""
        buffer = self.buffer + data
        sizes = self.sizes.copy()
        out = []
        while sizes and len(buffer) >= sizes[0]:
            n = sizes.popleft()
            out.append(bytes(buffer[:n]))
            del buffer[:n]
        if buffer and (not data or not sizes):
            out.append(bytes(buffer))
            buffer.clear()
        self.buffer, self.sizes = buffer, sizes
        return out


_TOKEN_CHARS: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _safe_header(name: str, value: str) -> bool:
    """Recorded headers are hostile: only well-formed ones are sent again."""
    return bool(_TOKEN_CHARS.match(name)) and not any(c in value for c in "\r\n\x00")


class ReplayServer:
    """Loopback HTTP/1.1 server that answers flows redirected to it with the response registered
    under the token they carry. It is a server mitmproxy treats as any upstream, so the answer takes
    mitmproxy's streaming path; see the module docstring for why a response set in the `request` hook
    cannot keep SSE chunk boundaries."""

    def __init__(self, pace: str) -> None:
        self.pace = pace
        self.pending: dict[str, CannedResponse] = {}
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def register(self, canned: CannedResponse) -> str:
        token = secrets.token_hex(16)
        self.pending[token] = canned
        return token

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                token = await self._read_request(conn, reader)
                if token is None:
                    return
                canned = self.pending.pop(token, None) or CannedResponse(
                    502, "Bad Gateway", (("content-type", "text/plain"),), b"failcore replay: unknown token\n"
                )
                await self._send(conn, writer, canned)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError) as e:
            logger.debug("failcore replay server: %s", e)
        finally:
            writer.close()

    @staticmethod
    async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> str | None:
        token: str | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                token = next(
                    (v.decode("latin-1") for k, v in event.headers if k == TOKEN_HEADER.encode()), ""
                )
            elif isinstance(event, h11.EndOfMessage):
                return token or ""
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, canned: CannedResponse) -> None:
        headers = [(k, v) for k, v in canned.headers if _safe_header(k, v)]
        if canned.chunks is None:
            headers.append(("content-length", str(len(canned.body))))
        else:
            headers.append(("transfer-encoding", "chunked"))
        writer.write(
            conn.send(h11.Response(status_code=canned.status, headers=headers, reason=canned.reason.encode()))
            or b""
        )
        if canned.chunks is None:
            if canned.body:
                writer.write(conn.send(h11.Data(data=canned.body)) or b"")
        else:
            await self._send_chunks(conn, writer, canned)
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()

    async def _send_chunks(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, canned: CannedResponse
    ) -> None:
        assert canned.chunks is not None
        paced = self.pace == "recorded" and canned.offsets_ms is not None
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        offset = 0
        for i, size in enumerate(canned.chunks):
            if paced:
                assert canned.offsets_ms is not None
                delay = t0 + canned.offsets_ms[i] / 1000 - loop.time()
                if delay > 0:
                    await writer.drain()
                    await asyncio.sleep(delay)
            piece = canned.body[offset : offset + size]
            offset += size
            if piece:
                writer.write(conn.send(h11.Data(data=piece)) or b"")
        if offset < len(canned.body):
            writer.write(conn.send(h11.Data(data=canned.body[offset:])) or b"")
