"""How often, and where, LlmMeter decodes a compressed request body (mitmproxy's addon harness: hooks
run on the harness's event loop in the main thread, work handed off runs in worker threads)."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from failcore.evidence import body
from failcore.proxy.gate import PolicyGate
from failcore.proxy.meter import LlmMeter
from tests.addon_harness import concerns, decoded_by_thread
from tests.llm_replay import load_exchanges

ANSWER = b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 5}}'


def _decodes_of(wire: bytes, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each decoding of `wire` ran on the event loop's thread (the main thread here)."""
    on_loop: list[bool] = []
    decoded_steps = body.decoded_steps

    def counted(data: bytes, encoding: str | None) -> Iterator[bytes]:
        if data == wire:
            on_loop.append(threading.current_thread() is threading.main_thread())
        return decoded_steps(data, encoding)

    monkeypatch.setattr(body, "decoded_steps", counted)
    return on_loop


def test_a_compressed_request_that_is_not_a_json_object_is_decoded_once_off_the_loop(
    confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gzip'd prompt that is a JSON array (recorded requests, 1 MiB), not an object: read off the loop
    when the request went out (its model unknown), it was decoded again on the event loop when the
    answer was metered, to the same end."""
    requests = [json.loads(e["request_body"]) for e in load_exchanges() if e["request_body"]]
    plain = json.dumps(requests * ((1 << 20) // len(json.dumps(requests)) + 1)).encode()
    wire = gzip.compress(plain)
    on_loop = _decodes_of(wire, monkeypatch)
    with concerns(PolicyGate, LlmMeter, confdir=confdir) as h:
        req = tutils.treq(
            host="api.openai.com",
            port=443,
            scheme=b"https",
            method=b"POST",
            path=b"/v1/chat/completions",
            headers=http.Headers([(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]),
            content=b"",
        )
        req.raw_content = wire
        flow = tflow.tflow(req=req)
        h.hooks(flow, "requestheaders", "request")
        flow.response = tutils.tresp(
            headers=http.Headers([(b"content-type", b"application/json")]), content=ANSWER
        )
        h.hooks(flow, "responseheaders", "response")
        llm = h.state(flow).llm
        assert llm is not None and llm.call is not None and llm.model_unknown
        assert llm.request_size == len(plain)
        assert llm.call.input_tokens == 5
        assert h.session.internal_errors == 0
    assert on_loop == [False]


# What a test accepts as "a little" decoded on the loop (the meter parses no more than 128 KiB there).
ON_LOOP_BOUND = 512 * 1024


@pytest.mark.parametrize("side", ["request", "response"])
def test_a_small_compressed_body_decoding_to_megabytes_is_decoded_off_the_loop(
    side: str, confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt (or an answer) of a few KiB gzip'd that decodes to 4 MiB: it was decoded whole on the
    event loop (up to 8 MiB: ~30-50 ms on this machine); now no more than a plain body is parsed there,
    the rest in a worker thread, and what it names is read all the same."""
    prompt = {"model": "gpt-4o", "messages": [{"role": "user", "content": " " * (4 << 20)}]}
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": " " * (4 << 20)}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18},
    }
    request_body, response_body = json.dumps(prompt).encode(), json.dumps(answer).encode()
    if side == "request":
        request_body = gzip.compress(request_body)
        assert len(request_body) < 8 * 1024
    else:
        response_body = gzip.compress(response_body)
        assert len(response_body) < 8 * 1024
    counts = decoded_by_thread(monkeypatch)
    with concerns(PolicyGate, LlmMeter, confdir=confdir) as h:
        coding = [(b"content-encoding", b"gzip")]
        req = tutils.treq(
            host="api.openai.com",
            port=443,
            scheme=b"https",
            method=b"POST",
            path=b"/v1/chat/completions",
            headers=http.Headers(
                [(b"content-type", b"application/json"), *(coding if side == "request" else [])]
            ),
            content=b"",
        )
        req.raw_content = request_body
        flow = tflow.tflow(req=req)
        h.hooks(flow, "requestheaders", "request")
        flow.response = tutils.tresp(
            headers=http.Headers(
                [(b"content-type", b"application/json"), *(coding if side == "response" else [])]
            ),
            content=b"",
        )
        flow.response.raw_content = response_body
        h.hooks(flow, "responseheaders", "response")
        llm = h.state(flow).llm
        assert llm is not None and llm.call is not None
        assert llm.request_model == "gpt-4o"
        assert (llm.call.input_tokens, llm.call.output_tokens) == (7, 11)
        assert h.session.internal_errors == 0
    assert counts[0] <= ON_LOOP_BOUND and counts[1] >= 4 << 20
