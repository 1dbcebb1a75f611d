"""Attack: a secret under the `compress` / `x-compress` content coding (RFC 9110 8.4.1.1: Unix compress,
LZW), which failcore did not decode.

A lone coding failcore did not know was read as no coding: a request body under `Content-Encoding:
compress` was scanned as sent (LZW bytes, where the secret is not spelled out), forwarded under a BLOCK
rule, and recorded as sent, from which `gzip -dc` gives the secret back; a strict response stream under
it was cut at its first chunk as unscannable, whatever it held. A receiver undoes the coding (Apache's
mod_deflate does not, but a Node or Go service may, and `gzip -dc` / `uncompress` do). Now it is decoded
(failcore.evidence.lzw) wherever a body is decoded: the secret is found and refused, the tape records it
decoded and masked, and a stream that does not decode is `dlp.unscannable`.

Each through the real proxy; each asserts what reached the logging upstream and what the tape holds
(its bodies decoded by gzip -dc too: tests.security.coding_helpers.recoverable)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.lzw_helpers import gzip_dc, lzw_compress, lzw_pack
from tests.security.budget_helpers import recorded_streams_without_usage, token_budget
from tests.security.coding_helpers import encode_stack, recoverable
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK, plain_request, send_raw, stream_through
from tests.security.transfer_helpers import RawUpstream, through_proxy
from tests.security.upstream import EncodedStreamServer, LoggingUpstream

SECRET = f'{{"note": "deploy", "key": "{AWS_KEY_ID}"}}'.encode()
CLEAN = b'{"note": "deploy", "key": "nothing-secret-here"}'
OBSERVE = "version: 1\nmode: observe\n"


def _recoverable(tape: Path) -> bool:
    return any(AWS_KEY_ID.encode() in data for data in recoverable(tape))


def _post(proxy: Any, upstream: LoggingUpstream, coding: str, wire: bytes) -> httpx.Response:
    with proxied_client(proxy) as client:
        return client.post(
            f"{upstream.url}/upload",
            content=wire,
            headers={"content-encoding": coding, "content-type": "application/json"},
        )


def _assert_refused(response: httpx.Response, upstream: LoggingUpstream, tape: Path) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["x-failcore-rule"] == "dlp:aws-access-key-id"
    assert upstream.received_bytes() == b"", "nothing of the request reached the upstream"
    [event] = network_events(read_tape(tape))
    assert (event["decision"], event["outcome"]) == ("BLOCK", "BLOCKED")
    assert any(h["location"].startswith("request.body") for h in event["dlp"]["hits"])
    assert not _recoverable(tape)


@pytest.mark.parametrize("coding", ["compress", "x-compress"])
def test_a_compressed_secret_is_refused(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path, coding: str
) -> None:
    wire = lzw_compress(SECRET)
    assert gzip_dc(wire) in (None, (SECRET, 0)), "what a receiver reads"
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    response = _post(proxy, logging_upstream, coding, wire)
    proxy.flush()
    _assert_refused(response, logging_upstream, tmp_path / "tape")


@pytest.mark.parametrize("stack", ["compress, gzip", "gzip, compress", "x-compress, br, x-compress"])
def test_a_secret_under_stacked_codings_with_compress_is_refused(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path, stack: str
) -> None:
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    response = _post(proxy, logging_upstream, stack, encode_stack(SECRET, stack))
    proxy.flush()
    _assert_refused(response, logging_upstream, tmp_path / "tape")


def _chunked_post(upstream: LoggingUpstream, coding_header: str, wire: bytes) -> bytes:
    """A POST whose body is `wire` in 5-byte HTTP chunks (mitmproxy joins them; the codes straddle
    them), `coding_header` naming its coding."""
    head = plain_request(
        upstream, "POST", "/upload", headers=f"Content-Type: application/json\r\n{coding_header}"
    )
    pieces = [wire[i : i + 5] for i in range(0, len(wire), 5)]
    return head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


@pytest.mark.parametrize(
    "coding_header",
    [
        "Content-Encoding: compress\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: compress, chunked\r\n",
    ],
    ids=["content-coding", "transfer-coding"],
)
def test_a_chunked_compressed_secret_is_refused(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, coding_header: str
) -> None:
    """As a content coding in chunked framing, and as a transfer coding (`compress, chunked`: mitmproxy
    forwards the LZW bytes for the receiver to undo; it was refused as unscannable, now for the secret
    it holds)."""
    proxy = start_proxy(policy_file(DLP_BLOCK))
    answer = send_raw(proxy.port, _chunked_post(plain_logging_upstream, coding_header, lzw_compress(SECRET)))
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert b"x-failcore-rule: dlp:aws-access-key-id" in answer.lower()
    assert plain_logging_upstream.received_bytes() == b""
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["outcome"]) == ("BLOCK", "BLOCKED")
    assert not _recoverable(tmp_path / "tape")


def test_a_compressed_request_is_recorded_decoded_and_masked(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """Observe mode forwards it; the tape holds it decoded, the secret masked, no LZW bytes."""
    proxy = start_proxy(policy_file(OBSERVE), upstream_ca=logging_upstream.ca_path)
    response = _post(proxy, logging_upstream, "compress", lzw_compress(SECRET))
    proxy.flush()
    assert response.status_code == 200
    assert not _recoverable(tmp_path / "tape"), "the tape gives the secret back"
    [event] = network_events(read_tape(tmp_path / "tape"))
    body = event["request"]["body"]
    assert body["encoding"] == "compress" and body["sha256_of"] == "decoded"
    assert body["decoded_size"] == len(SECRET) and body["text"].startswith('{"note": "deploy", "key": "')
    assert body["dlp_masked"] == 1 and AWS_KEY_ID not in body["text"]
    assert [h["rule"] for h in event["dlp"]["hits"]] == ["aws-access-key-id"]


def test_a_compressed_response_is_recorded_decoded_and_masked(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    plain_logging_upstream.respond_with = (
        200,
        [(b"content-type", b"application/json"), (b"content-encoding", b"x-compress")],
        lzw_compress(SECRET),
    )
    proxy = start_proxy(policy_file(OBSERVE))
    answer = send_raw(proxy.port, plain_request(plain_logging_upstream, "GET", "/download"))
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert not _recoverable(tmp_path / "tape"), "the tape gives the secret back"
    [event] = network_events(read_tape(tmp_path / "tape"))
    body = event["response"]["body"]
    assert body["sha256_of"] == "decoded" and body["dlp_masked"] == 1
    assert any(h["location"].startswith("response.body") for h in event["dlp"]["hits"])


GITHUB_PAT = b"ghp_" + b"Z9y8X7w6V5u4" * 3
STRICT = "mode: enforce\ndlp:\n  stream: strict\n  rule_actions: {github-pat: BLOCK}\n"
EVENTS = b'data: {"text": "hello"}\n\n' + b'data: {"text": "token ' + GITHUB_PAT + b' done"}\n\n'


def test_a_strict_stream_under_compress_is_cut_at_the_secret(
    start_proxy, policy_file, tmp_path: Path
) -> None:
    """One LZW stream in two chunks, the secret whole only with the second: the first goes out (it
    decodes to `hello` and half a token), the second is cut."""
    wire = lzw_compress(EVENTS)
    at = len(wire) * 3 // 4
    first = gzip_dc(wire[:at])
    assert first is None or (GITHUB_PAT[:8] in first[0] and GITHUB_PAT not in first[0]), "split in the token"
    server = EncodedStreamServer([wire[:at], wire[at:]], encoding="compress")
    try:
        proxy = start_proxy(policy_file(STRICT))
        received, failure = stream_through(proxy, f"http://127.0.0.1:{server.port}/events")
    finally:
        server.close()
    assert isinstance(failure, httpx.TransportError), failure  # cut
    assert received == wire[:at], "the first chunk went out, the second did not"
    decoded = gzip_dc(received)
    assert decoded is None or (
        decoded[0].startswith(b'data: {"text": "hello"}') and GITHUB_PAT not in decoded[0]
    )
    proxy.stop()
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert event["cut"]["reason"] == "dlp" and "github-pat" in event["cut"]["detail"]
    assert not any(GITHUB_PAT in data for data in recoverable(tmp_path / "tape"))


@pytest.mark.parametrize(
    "wire",
    [
        lzw_pack([ord("{"), ord('"'), 300]),  # a code past the table
        b"\x1f\x9d\x91" + lzw_compress(CLEAN)[3:],  # 17-bit codes
        b"\x1f\x9d",  # cut inside its header
    ],
    ids=["code-past-the-table", "17-bits", "truncated-header"],
)
def test_a_malformed_compress_body_is_unscannable(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path, wire: bytes
) -> None:
    """A receiver whose decoder is more lenient reads what was not scanned: under a BLOCK rule,
    `dlp.unscannable` (default BLOCK) refuses it, as a gzip body that does not decode."""
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    response = _post(proxy, logging_upstream, "compress", wire)
    proxy.flush()
    assert response.status_code == 403 and response.headers["x-failcore-rule"] == "dlp:unscannable"
    assert logging_upstream.received_bytes() == b""
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("BLOCK", "dlp:unscannable")
    assert any(w["reason"] == "dlp_unscannable" for w in event["warnings"])


def _openai_stream() -> tuple[bytes, bytes, int]:
    """A recorded OpenAI chat stream without usage nor tool calls (the longest), its request, and the
    characters of content it carries (counted here)."""
    best: tuple[int, bytes, bytes] | None = None
    for request, exchange in recorded_streams_without_usage():
        chars, tools = 0, 0
        for line in exchange["response_body"].splitlines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                for choice in json.loads(line[5:]).get("choices") or []:
                    chars += len((choice.get("delta") or {}).get("content") or "")
                    tools += len((choice.get("delta") or {}).get("tool_calls") or [])
        if "max_tokens" not in request and not tools and (best is None or chars > best[0]):
            best = (chars, exchange["request_body"].encode(), exchange["response_body"].encode())
    assert best is not None and best[0] > 1000
    return best[2], best[1], best[0]


def test_a_compressed_stream_is_charged_its_text(start_proxy, policy_file, tmp_path: Path) -> None:
    """The stream meter undoes `compress` as the answer passes (in 1000-byte chunks): an output budget
    its text exhausts refuses the next call. It was charged the answer's wire size, LZW bytes."""
    sse, request, chars = _openai_stream()
    wire = lzw_compress(sse)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(wire[i : i + 1000]), wire[i : i + 1000]) for i in range(0, len(wire), 1000)
    )
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: compress\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    with RawUpstream(answer) as upstream:
        proxy = start_proxy(policy_file(token_budget(chars, metric="output_tokens")))
        call = (
            f"POST http://{upstream.authority}/v1/chat/completions HTTP/1.1\r\nHost: {upstream.authority}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(request)}\r\nConnection: close\r\n\r\n"
        ).encode() + request
        answers = [through_proxy(proxy.port, call) for _ in range(2)]
        proxy.flush()
    assert [a[:12] for a in answers] == [b"HTTP/1.1 200", b"HTTP/1.1 429"], answers[1][:300]
    assert upstream.received_bytes().count(b"POST ") == 1
    first, refused = network_events(read_tape(tmp_path / "tape"))
    assert (refused["decision"], refused["rule"]) == ("BLOCK", "budget:tokens")
    assert first["llm"]["budget_estimate"]["output_tokens"] == chars + 4
