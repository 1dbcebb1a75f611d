"""Attack: an LLM answer whose body is coded in a way the stream meter did not undo walked past a token
budget, charged as if it had generated nothing (or only its compressed size).

- a streamed answer under stacked codings (`Content-Encoding: gzip, br`; `deflate, gzip`; a coding in
  Transfer-Encoding behind a content coding, `br` + `gzip, chunked`): the meter undid one coding only,
  so it read no text and charged an estimate of 0 output characters;
- a streamed answer under a coding failcore does not decode: also 0, now its wire size;
- a Bedrock answer failcore cannot read (AWS's binary event stream), gzip'd: weighed by its compressed
  size, now by its decoded size;
- a JSON answer whose codings include one failcore does not decode: 0, now what it decodes to.

The upstream answers a real recorded OpenAI stream without usage (openllmetry's cassettes), re-encoded
here with Python's own gzip/zlib/brotli/zstd, and the expected charge is counted from the plaintext by
the test. Each through the real proxy: the next call is refused by the budget and never reaches the
upstream, and the tape records the estimate charged."""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import struct
from pathlib import Path

import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.budget_helpers import (
    completion_without_usage,
    recorded_streams_without_usage,
    token_budget,
)
from tests.security.coding_helpers import encode_stack
from tests.security.transfer_helpers import RawUpstream, through_proxy


def _answer(content_type: str, body: bytes, content_encoding: str | None, transfer: str | None) -> bytes:
    """A 200 carrying `body` coded by `content_encoding` then `transfer` (its last coding `chunked`, in
    chunks of 1000 bytes), or with a Content-Length when there is no Transfer-Encoding."""
    wire = encode_stack(encode_stack(body, content_encoding), transfer)
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n"
    if content_encoding:
        head += f"Content-Encoding: {content_encoding}\r\n"
    if transfer is None:
        return f"{head}Content-Length: {len(wire)}\r\n\r\n".encode() + wire
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(wire[i : i + 1000]), wire[i : i + 1000]) for i in range(0, len(wire), 1000)
    )
    return f"{head}Transfer-Encoding: {transfer}\r\n\r\n".encode() + chunks + b"0\r\n\r\n"


def _post(authority: str, path: str, body: bytes, content_encoding: str | None = None) -> bytes:
    coding = f"Content-Encoding: {content_encoding}\r\n" if content_encoding else ""
    return (
        f"POST http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n"
        f"{coding}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def _recorded_stream() -> tuple[bytes, bytes, int]:
    """A real OpenAI chat stream without usage and without tool calls (the longest such), its request,
    and the characters of content it carries (counted here)."""
    best: tuple[int, bytes, bytes] | None = None
    for request, exchange in recorded_streams_without_usage():
        if "max_tokens" in request:
            continue
        chars, tools = 0, 0
        for line in exchange["response_body"].splitlines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                for choice in json.loads(line[5:]).get("choices") or []:
                    delta = choice.get("delta") or {}
                    chars += len(delta.get("content") or "")
                    tools += len(delta.get("tool_calls") or [])
        if tools == 0 and (best is None or chars > best[0]):
            best = (chars, exchange["request_body"].encode(), exchange["response_body"].encode())
    assert best is not None and best[0] > 1000
    return best[2], best[1], best[0]


def _two_calls(
    answer: bytes,
    path: str,
    request: bytes,
    budget: str,
    tape: Path,
    start_proxy,
    policy_file,
    request_encoding: str | None = None,
    sets: list[str] | None = None,
) -> dict:
    """Two calls under `budget`: the first reaches the upstream and is charged, the second is refused
    by `budget:tokens` and never leaves. The first call's `llm` evidence."""
    with RawUpstream(answer) as upstream:
        proxy = start_proxy(policy_file(budget), sets=sets)
        request = _post(upstream.authority, path, encode_stack(request, request_encoding), request_encoding)
        answers = [through_proxy(proxy.port, request) for _ in range(2)]
        proxy.flush()
    assert [a[:12] for a in answers] == [b"HTTP/1.1 200", b"HTTP/1.1 429"], answers[1][:300]
    assert upstream.received_bytes().count(b"POST ") == 1
    first, refused = network_events(read_tape(tape))
    assert (refused["decision"], refused["rule"]) == ("BLOCK", "budget:tokens")
    assert first["llm"]["usage"]["known"] is False
    return first["llm"]


@pytest.mark.parametrize(
    ("content_encoding", "transfer"),
    [
        ("gzip, br", "chunked"),
        ("deflate, gzip", "chunked"),
        ("x-gzip, zstd", "chunked"),
        ("br", "gzip, chunked"),
        ("gzip, br", None),  # with a Content-Length: an SSE answer streams all the same
    ],
)
def test_a_stream_under_stacked_codings_is_charged_its_text(
    start_proxy, policy_file, tmp_path: Path, content_encoding: str, transfer: str | None
) -> None:
    sse, request, chars = _recorded_stream()
    answer = _answer("text/event-stream", sse, content_encoding, transfer)
    # An output budget the text exhausts (the estimate: a token a character, 4 for the answer).
    llm = _two_calls(
        answer,
        "/v1/chat/completions",
        request,
        token_budget(chars, metric="output_tokens"),
        tmp_path / "tape",
        start_proxy,
        policy_file,
    )
    assert llm["budget_estimate"]["output_tokens"] == chars + 4


def test_a_stream_under_a_coding_failcore_cannot_undo_is_charged_its_wire_size(
    start_proxy, policy_file, tmp_path: Path
) -> None:
    """`gzip, x-unknown`: failcore cannot read the stream, so it charges one output token per byte of
    it as it passed (de-chunked), never nothing."""
    sse, request, _ = _recorded_stream()
    wire = encode_stack(sse, "gzip, x-unknown")
    answer = _answer("text/event-stream", sse, "gzip, x-unknown", "chunked")
    llm = _two_calls(
        answer,
        "/v1/chat/completions",
        request,
        token_budget(len(wire), metric="output_tokens"),
        tmp_path / "tape",
        start_proxy,
        policy_file,
    )
    assert llm["budget_estimate"]["output_tokens"] == len(wire) + 4


def _event_message(event_type: str, payload: bytes) -> bytes:
    """One message of AWS's binary event-stream encoding (prelude, headers, payload, CRC32s) as
    Bedrock's InvokeModelWithResponseStream sends it."""
    headers = b""
    for name, value in (
        (":event-type", event_type),
        (":content-type", "application/json"),
        (":message-type", "event"),
    ):
        headers += (
            bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value)) + value.encode()
        )
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    message = prelude + headers + payload
    return message + struct.pack(">I", binascii.crc32(message))


def _bedrock_stream(text: str) -> bytes:
    """An Anthropic Messages stream inside Bedrock's event stream, `text` in deltas of 50 characters."""
    events = [
        {"type": "message_start", "message": {"id": "msg_bdrk_1", "type": "message", "role": "assistant"}}
    ]
    events += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text[i : i + 50]}}
        for i in range(0, len(text), 50)
    ]
    events += [{"type": "message_stop"}]
    return b"".join(
        _event_message(
            "chunk", json.dumps({"bytes": base64.b64encode(json.dumps(e).encode()).decode()}).encode()
        )
        for e in events
    )


@pytest.mark.parametrize("transfer", [None, "chunked"], ids=["held", "streamed"])
def test_a_gzipped_bedrock_stream_is_weighed_decoded(
    start_proxy, policy_file, tmp_path: Path, transfer: str | None
) -> None:
    """A Bedrock answer failcore cannot read is charged a token per byte: of the event stream as it
    decodes, not of its gzip'd wire bytes (20,000 repeated characters gzip to a few hundred)."""
    frames = _bedrock_stream("All work and no play makes Jack a dull boy. " * 500)
    answer = _answer("application/vnd.amazon.eventstream", frames, "gzip", transfer)
    assert len(answer) * 10 < len(frames)
    model = "anthropic.claude-3-5-sonnet-20240620-v1:0"
    request = json.dumps(
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 200_000,
            "messages": [{"role": "user", "content": "hi"}],
        }
    ).encode()
    llm = _two_calls(
        answer,
        f"/model/{model}/invoke-with-response-stream",
        request,
        token_budget(len(frames), metric="output_tokens"),
        tmp_path / "tape",
        start_proxy,
        policy_file,
    )
    assert llm["provider"] == "bedrock"
    assert llm["budget_estimate"]["output_tokens"] == len(frames) + 4


def test_a_json_answer_under_a_coding_failcore_cannot_undo_is_charged_what_it_decodes_to(
    start_proxy, policy_file, tmp_path: Path
) -> None:
    """A chat completion without usage under `gzip, x-unknown`: failcore undoes the gzip, cannot read
    the rest, and charges the body as far as it decodes (here all of it: x-unknown left it as it was)."""
    text = "Lorem ipsum dolor sit amet. " * 100
    body = completion_without_usage(text)
    answer = _answer("application/json", body, "gzip, x-unknown", None)
    request = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    llm = _two_calls(
        answer,
        "/v1/chat/completions",
        request,
        token_budget(len(body), metric="output_tokens"),
        tmp_path / "tape",
        start_proxy,
        policy_file,
    )
    assert llm["budget_estimate"]["output_tokens"] == len(body) + 4


NO_USAGE = b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": []}'


def test_a_prompt_under_a_coding_failcore_cannot_undo_is_weighed_as_far_as_it_decodes(
    start_proxy, policy_file, tmp_path: Path
) -> None:
    """A 3000-character prompt under `gzip, x-unknown`: failcore cannot read it as JSON, and weighed it
    by its gzip'd size (a few dozen bytes); it is charged a token per byte it decodes to."""
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 3000}]}).encode()
    assert len(encode_stack(body, "gzip, x-unknown")) < 200
    llm = _two_calls(
        _answer("application/json", NO_USAGE, None, None),
        "/v1/chat/completions",
        body,
        token_budget(1000),
        tmp_path / "tape",
        start_proxy,
        policy_file,
        "gzip, x-unknown",
    )
    assert llm["request_model"] is None
    assert llm["budget_estimate"]["input_tokens"] == len(body)


def test_a_prompt_that_decodes_past_what_failcore_reads_is_weighed_at_least_that(
    start_proxy, policy_file, tmp_path: Path
) -> None:
    """A 9 MiB prompt brotli'd to a few dozen bytes is past what failcore decodes to read a request on
    the event loop: it was weighed by those few bytes; now by what it decoded before stopping."""
    body = json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": " " * (9 << 20)}]}
    ).encode()
    assert len(encode_stack(body, "br")) < 1000
    llm = _two_calls(
        _answer("application/json", NO_USAGE, None, None),
        "/v1/chat/completions",
        body,
        token_budget(1_000_000),
        tmp_path / "tape",
        start_proxy,
        policy_file,
        "br",
    )
    assert 1_000_000 <= llm["budget_estimate"]["input_tokens"] <= len(body)


def test_a_gzipped_json_answer_past_the_metered_copy_is_weighed_decoded(
    start_proxy, policy_file, tmp_path: Path
) -> None:
    """A length-less gzip'd chat completion without usage, larger on the wire than the copy failcore
    keeps to meter it whole (`failcore_llm_body_max`, set small here: 64 MiB by default): it was charged
    its gzip'd size; now what it decodes to, counted as it passed."""
    text = "Lorem ipsum dolor sit amet. " * 2000
    body = completion_without_usage(text)
    answer = _answer("application/json", body, "gzip", "chunked")
    assert 100 < len(encode_stack(body, "gzip")) < len(body) // 20
    request = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    llm = _two_calls(
        answer,
        "/v1/chat/completions",
        request,
        token_budget(len(body), metric="output_tokens"),
        tmp_path / "tape",
        start_proxy,
        policy_file,
        sets=["failcore_llm_body_max=100"],
    )
    assert llm["budget_estimate"]["output_tokens"] == len(body) + 4


def test_a_gzipped_streamed_prompt_past_the_metered_copy_is_weighed_decoded(
    start_proxy, policy_file, plain_logging_upstream, tmp_path: Path
) -> None:
    """Observe mode: a chunked gzip'd request streams through, larger on the wire than the copy failcore
    keeps to read it (`failcore_llm_body_max`, set small here): it was charged its gzip'd size; now what
    it decodes to, counted as it passed (the budget's warning comes at the second call)."""
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 20_000}]}).encode()
    wire = gzip.compress(body, mtime=0)
    assert 100 < len(wire) < 1000
    plain_logging_upstream.respond_with = (200, [(b"content-type", b"application/json")], NO_USAGE)
    proxy = start_proxy(policy_file(token_budget(10_000, mode="observe")), sets=["failcore_llm_body_max=100"])
    url = f"{plain_logging_upstream.url}/v1/chat/completions"
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    with proxied_client(proxy) as client:
        statuses = [
            client.post(url, content=iter([wire[:50], wire[50:]]), headers=headers).status_code
            for _ in range(2)
        ]
    proxy.flush()
    assert statuses == [200, 200]  # observe mode: nothing refused
    received = plain_logging_upstream.received_bytes()
    assert received.lower().count(b"transfer-encoding: chunked") == 2  # it did stream
    first, second = network_events(read_tape(tmp_path / "tape"))
    assert first["llm"]["budget_estimate"]["input_tokens"] == len(body)
    assert (second["decision"], second["rule"]) == ("WARN", "budget:tokens")
