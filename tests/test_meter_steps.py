"""The meter's decoding of a compressed body stays off the request path in bounded pieces: no single
event-loop call inflates tens of MiB (it stalls every other connection for that long).

Bodies are the recorded OpenAI/Anthropic answers of tests/data/conformance, compressed here with the
libraries' own encoders; the sizes expected are counted from the plaintext."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from failcore.proxy import streamcopy
from failcore.proxy.streamcopy import WholeBodyCopy
from tests.helpers import network_events, read_tape
from tests.llm_replay import load_exchanges
from tests.security.budget_helpers import completion_without_usage, token_budget
from tests.security.coding_helpers import encode_stack
from tests.security.transfer_helpers import RawUpstream, through_proxy

# What a test accepts as one bounded step of decoding (the code's step is smaller).
STEP_BOUND = 2 << 20
CHUNK = 64 * 1024
NO_USAGE = b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": []}'


def _recorded_text(at_least: int) -> bytes:
    """Recorded JSON answers, one after the other, until there are `at_least` bytes."""
    unit = b"\n".join(
        e["response_body"].encode()
        for e in load_exchanges()
        if "json" in (e["response_headers"].get("content-type") or "")
    )
    return unit * (at_least // len(unit) + 1)


class _Handed:
    """What the copy's decoder hands on, counted per call of the copy (or turn of the loop)."""

    def __init__(self) -> None:
        self.current = 0
        self.largest = 0

    def __call__(self, decoded: bytes) -> None:
        self.current += len(decoded)
        self.largest = max(self.largest, self.current)

    def next_call(self) -> None:
        self.current = 0


@pytest.mark.parametrize("codings", ["gzip", "gzip, zstd", "deflate, br"])
def test_a_copy_past_its_limit_decodes_what_it_kept_across_the_chunks_that_follow(
    codings: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1 MiB copy of a gzip'd answer decoding to 16 MiB passes its limit: what it kept (7 MiB decoded)
    was inflated in the one call that passed it; now each call decodes a bounded step, and the size is
    still what the body decodes to."""
    plain = _recorded_text(16 << 20)
    wire = encode_stack(plain, codings)
    limit = 1 << 20
    assert len(wire) > limit + 4 * CHUNK
    handed = _Handed()
    monkeypatch.setattr(streamcopy, "_discard", handed)
    copy = WholeBodyCopy(limit, codings)
    for start in range(0, len(wire), CHUNK):
        handed.next_call()
        copy(wire[start : start + CHUNK])
    assert copy.overflow
    assert 0 < handed.largest <= STEP_BOUND
    assert copy.size == len(plain)


async def _settle_counting_turns(copy: WholeBodyCopy, handed: _Handed) -> int:
    """copy.settle(), with a task that marks each turn of the loop (the decoding between two marks is
    what one loop call did); how many turns it took."""
    turns = 0
    done = False

    async def tick() -> None:
        nonlocal turns
        while not done:
            handed.next_call()
            turns += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    await copy.settle()
    done = True
    await ticker
    return turns


def test_what_is_pending_when_the_body_ends_is_decoded_a_step_per_loop_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The body ends right after the copy passed its limit: what it kept is decoded by `settle`, one
    bounded step per turn of the event loop, before the meter weighs it."""
    plain = _recorded_text(40 << 20)
    wire = encode_stack(plain, "gzip")
    limit = len(wire) - CHUNK
    handed = _Handed()
    monkeypatch.setattr(streamcopy, "_discard", handed)
    copy = WholeBodyCopy(limit, "gzip")
    for start in range(0, len(wire), CHUNK):
        handed.next_call()
        copy(wire[start : start + CHUNK])
    assert copy.overflow and handed.largest <= STEP_BOUND
    turns = asyncio.run(_settle_counting_turns(copy, handed))
    assert turns > len(plain) // STEP_BOUND
    assert handed.largest <= STEP_BOUND
    assert copy.size == len(plain)


def _chunked_answer(body: bytes, coding: str) -> bytes:
    """A 200 JSON answer without a length, `body` under Content-Encoding `coding`, in chunks of 16 KiB."""
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        f"Content-Encoding: {coding}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    return head.encode() + _chunks(encode_stack(body, coding))


def _chunks(wire: bytes, step: int = 16 * 1024) -> bytes:
    """`wire` in chunked framing, in chunks of `step` bytes."""
    framed = b"".join(
        b"%x\r\n%s\r\n" % (len(wire[i : i + step]), wire[i : i + step]) for i in range(0, len(wire), step)
    )
    return framed + b"0\r\n\r\n"


def test_an_answer_still_decoding_when_it_ends_is_charged_what_it_decodes_to(
    start_proxy, policy_file, tmp_path: Path
) -> None:
    """Through the proxy: a gzip'd chat completion without usage passes the metered copy's limit near its
    end, so most of it is still to be decoded when it ends (settled a step per loop turn): the budget is
    charged what it decodes to (a token per character, and the framing's 4), the next call refused."""
    text = _recorded_text(6 << 20).decode()
    body = completion_without_usage(text)
    wire = encode_stack(body, "gzip")
    assert len(wire) < 4 << 20 and len(body) > 4 * len(wire)
    with RawUpstream(_chunked_answer(body, "gzip")) as upstream:
        proxy = start_proxy(
            policy_file(token_budget(len(body), metric="output_tokens")),
            sets=[f"failcore_llm_body_max={len(wire) - 100}"],
        )
        request = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
        post = (
            f"POST http://{upstream.authority}/v1/chat/completions HTTP/1.1\r\nHost: {upstream.authority}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(request)}\r\nConnection: close\r\n\r\n"
        ).encode() + request
        answers = [through_proxy(proxy.port, post) for _ in range(2)]
        proxy.flush()
    assert [a[:12] for a in answers] == [b"HTTP/1.1 200", b"HTTP/1.1 429"]
    first, refused = network_events(read_tape(tmp_path / "tape"))
    assert (refused["decision"], refused["rule"]) == ("BLOCK", "budget:tokens")
    assert first["llm"]["budget_estimate"]["output_tokens"] == len(body) + 4


def test_a_streamed_prompt_still_decoding_when_it_ends_is_charged_what_it_decodes_to(
    start_proxy, policy_file, tmp_path: Path
) -> None:
    """Observe mode: a chunked gzip'd prompt streams through and passes the metered copy's limit in its
    last chunk, so it is decoded (a step per loop turn) after it ended: charged what it decodes to."""
    content = _recorded_text(6 << 20).decode()
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}).encode()
    wire = encode_stack(body, "gzip")
    assert len(body) > 4 * len(wire)
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(NO_USAGE)
    with RawUpstream(answer + b"Connection: close\r\n\r\n" + NO_USAGE) as upstream:
        proxy = start_proxy(
            policy_file(token_budget(1000, mode="observe")), sets=[f"failcore_llm_body_max={len(wire) - 100}"]
        )
        post = (
            f"POST http://{upstream.authority}/v1/chat/completions HTTP/1.1\r\nHost: {upstream.authority}\r\n"
            "Content-Type: application/json\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + _chunks(wire)
        assert through_proxy(proxy.port, post)[:12] == b"HTTP/1.1 200"
        proxy.flush()
    assert upstream.received_bytes().lower().count(b"transfer-encoding: chunked") == 1  # it did stream
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert event["llm"]["request_model"] is None  # past the copy: not read
    assert event["llm"]["budget_estimate"]["input_tokens"] == len(body)
