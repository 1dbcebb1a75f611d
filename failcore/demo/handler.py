"""One HTTP request to the stand-in: read and record it, route it, answer it (provider endpoints through
`replies` and `wire`, the generic test endpoints, the WebSocket upgrade).

Size: ~500 lines because it is one `BaseHTTPRequestHandler`: the routes are its methods."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from wsproto import ConnectionType, WSConnection

from failcore.demo.framing import StreamCompressor, big_body_pieces, compress, sse_frame
from failcore.demo.replies import (
    ReplyOptions,
    StandInError,
    content_text,
    dict_or_empty,
    new_id,
    parse_seconds,
    plan_chat_reply,
    plan_messages_reply,
    plan_responses_reply,
    read_options,
    require_dict,
    text_reply,
)
from failcore.demo.websocket import WebSocketEcho
from failcore.demo.wire import (
    AnthropicMessage,
    ChatCompletion,
    GeminiResult,
    OllamaResult,
    ResponsesResult,
    anthropic_error,
    openai_error,
)

log = logging.getLogger(__name__)

SAMPLE_DOCUMENT: dict[str, Any] = {
    "service": "failcore-standin",
    "items": [{"id": i, "name": f"item-{i}", "tags": ["alpha", "beta"]} for i in range(1, 21)],
}
BINARY_BODY = bytes(range(256)) * 4
MAX_REQUEST_BODY = 256 * 1024 * 1024
MAX_BIG_MB = 4096.0
MAX_SSE_EVENTS = 100_000
IDLE_CONNECTION_TIMEOUT = 120.0
CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, ssl.SSLError, TimeoutError)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    ts: float

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((value for key, value in self.headers if key.lower() == lowered), None)


class Owner(Protocol):
    """What a handler needs of the stand-in that runs it."""

    sse_gap: float

    def record(self, request: RecordedRequest) -> None: ...


_GEMINI_ROUTE = re.compile(
    r"^/v1(?:beta)?/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)$"
)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "failcore-standin/1"
    sys_version = ""
    timeout = IDLE_CONNECTION_TIMEOUT

    @property
    def owner(self) -> Owner:
        """The `StandIn` running this handler's server."""
        return self.server.owner  # type: ignore[attr-defined,no-any-return]

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("stand-in %s - " + format, self.address_string(), *args)  # noqa: G003 (http.server's own format)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # -- plumbing -----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except StandInError as exc:
            self.close_connection = True
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": {"message": str(exc), "type": "bad_request"}})
            return
        recorded = RecordedRequest(
            method=self.command, path=self.path, headers=list(self.headers.items()), body=body, ts=time.time()
        )
        self.owner.record(recorded)
        target = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(target.query).items()}
        route = self._route(self.command, target.path)
        try:
            route(body, query)
        except CLIENT_GONE:
            self.close_connection = True

    def _route(self, method: str, path: str) -> Callable[[bytes, dict[str, str]], None]:
        provider_routes = {
            "/v1/chat/completions": self._chat_completions,
            "/v1/responses": self._responses,
            "/v1/messages": self._messages,
        }
        get_routes = {
            "/sse": self._sse,
            "/json": self._json,
            "/gzip": self._encoded,
            "/deflate": self._encoded,
            "/br": self._encoded,
            "/zstd": self._encoded,
            "/big": self._big,
            "/binary": self._binary,
            "/slow": self._slow,
            "/drop": self._drop,
            "/ws": self._websocket,
        }
        if path == "/echo":
            return self._echo
        if method == "POST" and path in provider_routes:
            return provider_routes[path]
        if method == "POST" and _GEMINI_ROUTE.match(path):
            return self._gemini
        if method == "POST" and path in ("/api/chat", "/api/generate"):
            return self._ollama
        if method == "GET" and path in get_routes:
            return get_routes[path]
        if method == "GET" and path.startswith("/status/"):
            return self._status
        return self._not_found

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked_body()
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        try:
            length = int(raw_length)
        except ValueError as exc:
            raise StandInError(f"bad Content-Length {raw_length!r}") from exc
        if not 0 <= length <= MAX_REQUEST_BODY:
            raise StandInError(f"Content-Length out of range: {length}")
        return self.rfile.read(length)

    def _read_chunked_body(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError as exc:
                raise StandInError(f"bad chunk size {size_line!r}") from exc
            if size == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass  # trailers are read and discarded
                return b"".join(parts)
            total += size
            if total > MAX_REQUEST_BODY:
                raise StandInError("request body too large")
            parts.append(self.rfile.read(size))
            self.rfile.readline(8)

    def _send_bytes(
        self, status: int, body: bytes, content_type: str, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, document: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        self._send_bytes(status, json.dumps(document).encode(), "application/json", headers)

    def _start_chunked(self, status: int, content_type: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _stream_sse(
        self,
        frames: Iterable[bytes],
        gap: float,
        headers: Iterable[tuple[str, str]] = (),
        linger: float = 0.0,
        options: ReplyOptions | None = None,
        content_type: str = "text/event-stream; charset=utf-8",
    ) -> None:
        encoding = options.encoding if options is not None else "identity"
        extra = [("Cache-Control", "no-cache"), *headers]
        if encoding != "identity":
            extra.append(("Content-Encoding", encoding))
        if options is not None and options.framing == "length":
            body = compress(b"".join(frames), encoding) if encoding != "identity" else b"".join(frames)
            self._send_bytes(HTTPStatus.OK, body, content_type, extra)
            return
        compressor = StreamCompressor(encoding)
        self._start_chunked(HTTPStatus.OK, content_type, extra)
        for index, frame in enumerate(frames):
            if index and gap > 0:
                time.sleep(gap)
            self._write_chunk(compressor.piece(frame))
        self._write_chunk(compressor.end())
        if linger > 0:
            self.wfile.flush()
            time.sleep(linger)
        self._end_chunked()

    def _answer(self, document: Any, options: ReplyOptions, headers: Iterable[tuple[str, str]] = ()) -> None:
        """A JSON answer framed and encoded as the control headers ask."""
        body = json.dumps(document).encode()
        extra = list(headers)
        if options.encoding != "identity":
            body = compress(body, options.encoding)
            extra.append(("Content-Encoding", options.encoding))
        if options.framing != "chunked":
            self._send_bytes(HTTPStatus.OK, body, "application/json", extra)
            return
        self._start_chunked(HTTPStatus.OK, "application/json", extra)
        third = max(1, len(body) // 3)
        for piece in (body[:third], body[third : 2 * third], body[2 * third :]):
            self._write_chunk(piece)
        self._end_chunked()

    # -- providers ----------------------------------------------------------------------------

    def _provider_request(self, body: bytes, endpoint: str) -> tuple[dict[str, Any], ReplyOptions]:
        try:
            document = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StandInError(f"body is not valid JSON: {exc}") from exc
        return require_dict(document), read_options(self.headers, endpoint, self.owner.sse_gap)

    def _chat_completions(self, body: bytes, query: dict[str, str]) -> None:
        try:
            request, options = self._provider_request(body, "chat")
            reply = plan_chat_reply(request, options)
        except StandInError as exc:
            self._send_json(HTTPStatus.BAD_REQUEST, openai_error(str(exc)))
            return
        stream_options = request.get("stream_options") or {}
        completion = ChatCompletion(
            model=request["model"],
            reply=reply,
            usage=options.usage,
            include_usage=bool(stream_options.get("include_usage")),
        )
        headers = [("x-request-id", new_id("req_"))]
        if request.get("stream"):
            self._stream_sse(completion.frames(), options.gap, headers, options.linger, options)
        else:
            self._answer(completion.document(), options, headers)

    def _responses(self, body: bytes, query: dict[str, str]) -> None:
        try:
            request, options = self._provider_request(body, "responses")
            reply = plan_responses_reply(request, options)
        except StandInError as exc:
            self._send_json(HTTPStatus.BAD_REQUEST, openai_error(str(exc)))
            return
        result = ResponsesResult(request=request, reply=reply, usage=options.usage)
        headers = [("x-request-id", new_id("req_"))]
        if request.get("stream"):
            self._stream_sse(result.frames(), options.gap, headers, options.linger, options)
        else:
            self._answer(result.document(), options, headers)

    def _messages(self, body: bytes, query: dict[str, str]) -> None:
        try:
            request, options = self._provider_request(body, "messages")
            reply = plan_messages_reply(request, options)
        except StandInError as exc:
            self._send_json(HTTPStatus.BAD_REQUEST, anthropic_error(str(exc)))
            return
        message = AnthropicMessage(model=request["model"], reply=reply, usage=options.usage)
        headers = [("request-id", new_id("req_"))]
        if request.get("stream"):
            self._stream_sse(message.frames(), options.gap, headers, options.linger, options)
        else:
            self._answer(message.document(), options, headers)

    def _gemini(self, body: bytes, query: dict[str, str]) -> None:
        route = _GEMINI_ROUTE.match(urlsplit(self.path).path)
        assert route is not None
        try:
            request = json.loads(body)
            if not isinstance(request, dict) or not isinstance(request.get("contents"), list):
                raise StandInError("'contents' must be a list")
            options = read_options(self.headers, "gemini", self.owner.sse_gap)
        except (ValueError, StandInError) as exc:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": {"code": 400, "message": str(exc)}})
            return
        last = request["contents"][-1] if request["contents"] else {}
        result = GeminiResult(
            model=route.group("model"),
            reply=text_reply("Echo: " + content_text(dict_or_empty(last).get("parts")), options),
            usage=options.usage,
        )
        if route.group("method") == "generateContent":
            self._answer(result.document(), options)
        elif query.get("alt") == "sse":
            frames = (sse_frame(chunk) for chunk in result.chunks())
            self._stream_sse(frames, options.gap, (), options.linger, options)
        else:
            chunks = result.chunks()
            pieces = [
                (b"[" if i == 0 else b",\r\n") + json.dumps(chunk).encode() for i, chunk in enumerate(chunks)
            ]
            pieces[-1] += b"]"
            self._stream_sse(
                pieces, options.gap, (), options.linger, options, "application/json; charset=UTF-8"
            )

    def _ollama(self, body: bytes, query: dict[str, str]) -> None:
        try:
            request = require_dict(json.loads(body))
            options = read_options(self.headers, "ollama", self.owner.sse_gap)
        except (ValueError, StandInError) as exc:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        chat = urlsplit(self.path).path == "/api/chat"
        messages = request.get("messages") if chat else None
        last = messages[-1] if isinstance(messages, list) and messages else {}
        prompt = content_text(dict_or_empty(last).get("content")) if chat else str(request.get("prompt", ""))
        result = OllamaResult(request["model"], text_reply("Echo: " + prompt, options), options.usage, chat)
        if request.get("stream") is False:
            self._answer(result.document(), options)
        else:
            self._stream_sse(result.lines(), options.gap, (), options.linger, options, "application/x-ndjson")

    # -- generic endpoints --------------------------------------------------------------------

    def _bad_query(self, exc: Exception) -> None:
        self._send_json(HTTPStatus.BAD_REQUEST, {"error": {"message": str(exc), "type": "bad_request"}})

    def _sse(self, body: bytes, query: dict[str, str]) -> None:
        try:
            count = int(query.get("n", "3"))
            gap = parse_seconds(query.get("gap"), self.owner.sse_gap)
            if not 0 <= count <= MAX_SSE_EVENTS:
                raise StandInError(f"n out of range: {count}")
        except (ValueError, StandInError) as exc:
            self._bad_query(exc)
            return
        self._stream_sse((f"data: event {i}\n\n".encode() for i in range(1, count + 1)), gap)

    def _json(self, body: bytes, query: dict[str, str]) -> None:
        self._send_json(HTTPStatus.OK, SAMPLE_DOCUMENT)

    def _echo(self, body: bytes, query: dict[str, str]) -> None:
        try:
            text: str | None = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        self._send_json(
            HTTPStatus.OK,
            {
                "method": self.command,
                "path": self.path,
                "headers": [[name, value] for name, value in self.headers.items()],
                "body": text,
                "body_base64": base64.b64encode(body).decode("ascii"),
            },
        )

    def _encoded(self, body: bytes, query: dict[str, str]) -> None:
        encoding = urlsplit(self.path).path.lstrip("/")
        document = json.dumps(SAMPLE_DOCUMENT).encode()
        self._send_bytes(
            HTTPStatus.OK,
            compress(document, encoding),
            "application/json",
            [("Content-Encoding", encoding), ("Vary", "Accept-Encoding")],
        )

    def _big(self, body: bytes, query: dict[str, str]) -> None:
        try:
            megabytes = float(query.get("mb", "1"))
            if not 0 <= megabytes <= MAX_BIG_MB:
                raise StandInError(f"mb out of range: {megabytes}")
        except (ValueError, StandInError) as exc:
            self._bad_query(exc)
            return
        size = int(megabytes * 1024 * 1024)
        if query.get("chunked") == "1":
            self._start_chunked(HTTPStatus.OK, "application/octet-stream")
            for piece in big_body_pieces(size):
                self._write_chunk(piece)
            self._end_chunked()
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        for piece in big_body_pieces(size):
            self.wfile.write(piece)

    def _binary(self, body: bytes, query: dict[str, str]) -> None:
        self._send_bytes(HTTPStatus.OK, BINARY_BODY, "application/octet-stream")

    def _status(self, body: bytes, query: dict[str, str]) -> None:
        raw = urlsplit(self.path).path.removeprefix("/status/")
        if not raw.isdigit() or not 200 <= int(raw) <= 599:
            self._bad_query(StandInError(f"status must be 200..599, got {raw!r}"))
            return
        code = int(raw)
        if code in (HTTPStatus.NO_CONTENT, HTTPStatus.NOT_MODIFIED):
            # These statuses must carry neither a body nor a Content-Length.
            self.send_response(code)
            self.end_headers()
            return
        try:
            reason = HTTPStatus(code).phrase
        except ValueError:
            reason = "Unassigned"
        if code >= 400:
            self._send_json(code, {"error": {"code": code, "message": reason}})
        else:
            self._send_json(code, {"status": code, "reason": reason})

    def _slow(self, body: bytes, query: dict[str, str]) -> None:
        try:
            seconds = parse_seconds(query.get("seconds", "1"), 0.0, "seconds")
        except StandInError as exc:
            self._bad_query(exc)
            return
        time.sleep(seconds)
        self._send_json(HTTPStatus.OK, {"slept": seconds})

    def _drop(self, body: bytes, query: dict[str, str]) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _not_found(self, body: bytes, query: dict[str, str]) -> None:
        message = f"no route for {self.command} {urlsplit(self.path).path}"
        self._send_json(HTTPStatus.NOT_FOUND, {"error": {"message": message, "type": "not_found"}})

    # -- websocket ----------------------------------------------------------------------------

    def _websocket(self, body: bytes, query: dict[str, str]) -> None:
        if self.headers.get("Upgrade", "").lower() != "websocket":
            self._send_json(
                HTTPStatus.UPGRADE_REQUIRED,
                {"error": {"message": "websocket upgrade required", "type": "upgrade_required"}},
                [("Upgrade", "websocket"), ("Connection", "Upgrade")],
            )
            return
        self.close_connection = True
        head_lines = [self.requestline, *(f"{name}: {value}" for name, value in self.headers.items())]
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(("\r\n".join(head_lines) + "\r\n\r\n").encode("latin-1"))
        WebSocketEcho(ws, self.rfile.read1, self.wfile.write).run()
