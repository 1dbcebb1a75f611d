"""The stand-in frames and encodes its answers as asked (x-standin-framing / x-standin-encoding), and
speaks Gemini and Ollama, checked on the raw wire with a plain socket (no client library decoding)."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import zlib
from collections.abc import Iterator

import brotli
import pytest

from failcore.compat import zstd
from failcore.demo.framing import ENCODINGS, FRAMINGS
from failcore.demo.server import StandIn


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    with StandIn() as server:
        yield server


def raw_exchange(server: StandIn, path: str, body: dict, headers: dict[str, str]) -> tuple[dict, bytes]:
    """One HTTP/1.1 request over TLS; the response's headers and its body with chunking undone."""
    context = ssl.create_default_context(cafile=str(server.ca_path))
    payload = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(payload)}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with (
        socket.create_connection(("127.0.0.1", server.port)) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        tls.sendall(head.encode() + payload)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    raw_head, _, rest = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    parsed = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    parsed["status"] = lines[0].split()[1]
    if parsed.get("transfer-encoding") == "chunked":
        body_bytes = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body_bytes += rest[:size]
            rest = rest[size + 2 :]
        return parsed, body_bytes
    return parsed, rest[: int(parsed["content-length"])]


def decode(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    if encoding == "br":
        return brotli.decompress(data)
    if encoding == "zstd":
        return zstd.decompress(data)
    return data


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "wire"}]}


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("stream", [False, True])
def test_chat_answer_framed_and_encoded_as_asked(
    standin: StandIn, framing: str, encoding: str, stream: bool
) -> None:
    body = {**CHAT, "stream": stream, "stream_options": {"include_usage": True}}
    headers, wire = raw_exchange(
        standin, "/v1/chat/completions", body, {"x-standin-framing": framing, "x-standin-encoding": encoding}
    )
    assert headers["status"] == "200"
    assert ("content-length" in headers) is (framing == "length")
    assert (headers.get("transfer-encoding") == "chunked") is (framing == "chunked")
    assert headers.get("content-encoding") == (None if encoding == "identity" else encoding)
    text = decode(wire, encoding)
    if stream:
        assert text.endswith(b"data: [DONE]\n\n") and b'"prompt_tokens":17' in text
    else:
        assert json.loads(text)["usage"]["prompt_tokens"] == 17


def test_bad_control_header_is_a_400(standin: StandIn) -> None:
    headers, wire = raw_exchange(standin, "/v1/chat/completions", CHAT, {"x-standin-encoding": "lzma"})
    assert headers["status"] == "400" and b"x-standin-encoding" in wire


def test_gemini_and_ollama_endpoints(standin: StandIn) -> None:
    ask = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    _, wire = raw_exchange(standin, "/v1beta/models/gemini-2.5-flash:generateContent", ask, {})
    doc = json.loads(wire)
    assert doc["usageMetadata"]["promptTokenCount"] == 29 and doc["candidates"][0]["finishReason"] == "STOP"
    _, wire = raw_exchange(standin, "/v1beta/models/gemini-2.5-flash:streamGenerateContent", ask, {})
    chunks = json.loads(wire)
    assert isinstance(chunks, list) and chunks[-1]["usageMetadata"]["candidatesTokenCount"] == 15
    headers, wire = raw_exchange(
        standin, "/api/chat", {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}, {}
    )
    lines = [json.loads(line) for line in wire.splitlines()]
    assert headers["content-type"] == "application/x-ndjson"
    assert lines[-1]["done"] is True and (lines[-1]["prompt_eval_count"], lines[-1]["eval_count"]) == (31, 17)
