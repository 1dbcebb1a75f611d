"""Replay of recorded LLM exchanges, and an independent reader of the usage each provider reported.

`ReplayUpstream` is a plain-HTTP server that answers a request carrying `x-replay-id: N` with exchange
N's recorded status and body, re-encoded with its recorded Content-Encoding and sent with its recorded
framing (chunked without a length, or a Content-Length). The proxy under test is pointed at it by
`RedirectToReplay`, a mitmproxy addon that changes only the address a server connection opens to, so
failcore still sees the provider's real host and path.

`reported_usage` reads the usage a provider wrote in its own response body. It is written for the
tests, from the providers' documented fields, and shares no code with failcore's parser.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import brotli

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # Python < 3.14
    from backports import zstd  # type: ignore[no-redef]

CASSETTES = Path(__file__).parent / "data" / "conformance" / "llm" / "openllmetry-cassettes.jsonl"


def load_exchanges() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CASSETTES.read_text(encoding="utf-8").splitlines() if line]


def encode(body: bytes, encoding: str | None) -> bytes:
    if not encoding or encoding == "identity":
        return body
    if encoding == "gzip":
        return gzip.compress(body, mtime=0)
    if encoding == "deflate":
        return zlib.compress(body)
    if encoding == "br":
        return brotli.compress(body)
    if encoding == "zstd":
        return zstd.compress(body)
    raise ValueError(encoding)


def pieces(body: bytes, content_type: str) -> list[bytes]:
    """How the body goes out in chunks: SSE/NDJSON at event boundaries, anything else in three uneven
    parts (a parser must not depend on where chunks start)."""
    if "event-stream" in content_type or "ndjson" in content_type:
        sep = b"\n\n" if "event-stream" in content_type else b"\n"
        parts, start = [], 0
        while (end := body.find(sep, start)) >= 0:
            parts.append(body[start : end + len(sep)])
            start = end + len(sep)
        if start < len(body):
            parts.append(body[start:])
        return parts
    third = max(1, len(body) // 3)
    return [p for p in (body[:7], body[7:third], body[third:]) if p]


@dataclass
class Framing:
    content_type: str
    encoding: str | None
    chunked: bool


def recorded_framing(exchange: dict[str, Any]) -> Framing:
    headers = exchange["response_headers"]
    chunked = (headers.get("transfer-encoding") or "").lower() == "chunked" or not headers.get(
        "content-length"
    )
    return Framing(headers.get("content-type") or "", headers.get("content-encoding"), chunked)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.server.received.append(self.rfile.read(int(self.headers.get("content-length") or 0)))
        exchange = self.server.exchanges[int(self.headers["x-replay-id"])]
        framing = self.server.framing_of(exchange)
        body = encode(exchange["response_body"].encode(), framing.encoding)
        self.send_response(exchange["status"])
        if framing.content_type:
            self.send_header("Content-Type", framing.content_type)
        if framing.encoding:
            self.send_header("Content-Encoding", framing.encoding)
        if framing.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            # Compressed bodies go out in uneven parts of the compressed bytes; plain ones at event edges.
            parts = pieces(body, "" if framing.encoding else framing.content_type)
            if exchange.get("cut_after_parts") is not None:  # the upstream dies mid-body
                for part in parts[: exchange["cut_after_parts"]]:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            for part in parts:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    do_GET = do_POST


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, exchanges: list[dict[str, Any]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.exchanges = exchanges
        self.framing_of = recorded_framing
        # The request bodies as they reached the upstream.
        self.received: list[bytes] = []


class ReplayUpstream:
    def __init__(self, exchanges: list[dict[str, Any]]) -> None:
        self.server = _Server(exchanges)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def __enter__(self) -> ReplayUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class RedirectToReplay:
    """mitmproxy addon: every server connection opens to the replay server instead."""

    def __init__(self, port: int) -> None:
        self.port = port

    def server_connect(self, data: Any) -> None:
        data.server.address = ("127.0.0.1", self.port)


# ---------------------------------------------------------------- the providers' own usage


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _objects(body: str, content_type: str) -> list[dict[str, Any]]:
    """The JSON objects in a body: the document, each SSE `data:` payload, or each NDJSON line."""
    found: list[Any] = []
    stripped = body.lstrip()
    if "event-stream" in content_type or stripped.startswith(("data:", "event:")):
        for event in body.replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(line[5:].lstrip(" ") for line in event.split("\n") if line.startswith("data:"))
            if data and data != "[DONE]":
                with contextlib.suppress(ValueError):
                    found.append(json.loads(data))
    else:
        try:
            doc = json.loads(body)
            found.extend(doc if isinstance(doc, list) else [doc])
        except ValueError:
            for line in body.splitlines():
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line))
    return [o for o in found if isinstance(o, dict)]


@dataclass
class Reported:
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    service_tier: str | None = None


def reported_usage(exchange: dict[str, Any]) -> Reported | None:
    """The provider's own final usage, normalised as failcore documents it: input counts cached and
    cache-write tokens, output counts reasoning/thinking tokens. None when the body reports none."""
    content_type = (exchange["response_headers"].get("content-type") or "").lower()
    objects = _objects(exchange["response_body"], content_type)
    result: Reported | None = None
    anthropic: dict[str, int] = {}
    tier: str | None = None
    for obj in objects:
        for holder in (obj, obj.get("response")):
            if isinstance(holder, dict) and isinstance(holder.get("service_tier"), str):
                tier = holder["service_tier"]
        message = obj.get("message") if obj.get("type") == "message_start" else None
        if obj.get("type") == "message" or isinstance(message, dict) or obj.get("type") == "message_delta":
            usage = (message or obj).get("usage")
            if isinstance(usage, dict):
                for key in (
                    "input_tokens",
                    "output_tokens",
                    "cache_read_input_tokens",
                    "cache_creation_input_tokens",
                ):
                    if _int(usage.get(key)) is not None:
                        anthropic[key] = usage[key]
            if obj.get("type") != "message_start" and {"input_tokens", "output_tokens"} <= set(anthropic):
                read = anthropic.get("cache_read_input_tokens", 0)
                write = anthropic.get("cache_creation_input_tokens", 0)
                result = Reported(
                    anthropic["input_tokens"] + read + write, anthropic["output_tokens"], read, write
                )
            continue
        if obj.get("type") in ("response.completed", "response.incomplete", "response.failed"):
            obj = obj.get("response") or {}
        usage = obj.get("usage")
        groq = obj.get("x_groq")
        if not isinstance(usage, dict) and isinstance(groq, dict) and isinstance(groq.get("usage"), dict):
            usage = groq["usage"]
        if isinstance(usage, dict):
            if (
                _int(usage.get("prompt_tokens")) is not None
                and _int(usage.get("completion_tokens")) is not None
            ):
                details = usage.get("prompt_tokens_details") or {}
                cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else None
                if cached is None:
                    cached = _int(usage.get("prompt_cache_hit_tokens"))
                result = Reported(usage["prompt_tokens"], usage["completion_tokens"], cached or 0)
            elif _int(usage.get("input_tokens")) is not None and _int(usage.get("output_tokens")) is not None:
                details = usage.get("input_tokens_details") or {}
                cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else None
                result = Reported(usage["input_tokens"], usage["output_tokens"], cached or 0)
        meta = obj.get("usageMetadata")
        if isinstance(meta, dict) and _int(meta.get("promptTokenCount")) is not None:
            output = (_int(meta.get("candidatesTokenCount")) or 0) + (
                _int(meta.get("thoughtsTokenCount")) or 0
            )
            prompt = meta["promptTokenCount"] + (_int(meta.get("toolUsePromptTokenCount")) or 0)
            result = Reported(prompt, output, _int(meta.get("cachedContentTokenCount")) or 0)
        if obj.get("done") is True:
            prompt, output = _int(obj.get("prompt_eval_count")), _int(obj.get("eval_count"))
            if prompt is not None and output is not None:
                result = Reported(prompt, output)
    if result is not None:
        result.service_tier = tier
    return result
