"""Provider specifics found in real traffic: Groq's x_groq.usage, DeepSeek's cache hit/miss split, Gemini
on Vertex AI, OpenAI /v1/responses/compact; and the pieces that meter a stream whatever its encoding.

Wire samples are cut from real recorded exchanges (tests/data/conformance/llm, traceloop/openllmetry,
Apache-2.0) or the providers' API references.
"""

# ruff: noqa: E501

from __future__ import annotations

import gzip
import json
import zlib

import brotli
import pytest

from failcore.compat import zstd
from failcore.llm import SseUsageTracker, detect_api, parse_call
from failcore.proxy.streamcopy import StreamInflater, WholeBodyCopy

GROQ_STREAM = b"""data: {"id":"chatcmpl-532a6640","object":"chat.completion.chunk","created":1739948145,"model":"llama3-8b-8192","system_fingerprint":"fp_179b0f92c9","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"x_groq":{"id":"req_01jmefve36eajb6c1x6k8ppv5m"}}

data: {"id":"chatcmpl-532a6640","object":"chat.completion.chunk","created":1739948145,"model":"llama3-8b-8192","system_fingerprint":"fp_179b0f92c9","choices":[{"index":0,"delta":{"content":"!)"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-532a6640","object":"chat.completion.chunk","created":1739948145,"model":"llama3-8b-8192","system_fingerprint":"fp_179b0f92c9","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"x_groq":{"id":"req_01jmefve36eajb6c1x6k8ppv5m","usage":{"queue_time":0.28245049,"prompt_tokens":18,"prompt_time":0.002698174,"completion_tokens":73,"completion_time":0.060833333,"total_tokens":91,"total_time":0.063531507}}}

data: [DONE]

"""

DEEPSEEK_FINAL = b"""data: {"id":"8b1e7bf8","object":"chat.completion.chunk","created":1753946813,"model":"deepseek-chat","system_fingerprint":"fp_8802369eaa_prod0623_fp8_kvcache","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":832,"completion_tokens":324,"total_tokens":1156,"prompt_tokens_details":{"cached_tokens":0},"prompt_cache_hit_tokens":768,"prompt_cache_miss_tokens":64}}

data: [DONE]

"""

GEMINI_JSON = b"""{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"finishReason":"STOP","index":0}],
"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":877,"totalTokenCount":1940,"thoughtsTokenCount":1058},
"modelVersion":"gemini-2.5-flash"}"""

COMPACT_JSON = b"""{"id":"resp_01","object":"response.compaction","created_at":1764000000,"model":"gpt-5.1-codex-max",
"output":[{"type":"compaction","id":"cmp_01","encrypted_content":"gAAAA"}],
"usage":{"input_tokens":41000,"input_tokens_details":{"cached_tokens":40000},"output_tokens":900,
"output_tokens_details":{"reasoning_tokens":700},"total_tokens":41900}}"""


def _parse(host: str, path: str, request: dict, response: bytes, ctype: str):  # type: ignore[no-untyped-def]
    call = parse_call(
        host=host,
        path=path,
        request_body=json.dumps(request).encode(),
        response_body=response,
        response_content_type=ctype,
        status=200,
    )
    assert call is not None
    return call


def test_groq_stream_usage_in_x_groq() -> None:
    call = _parse(
        "api.groq.com:443",
        "/openai/v1/chat/completions",
        {"model": "llama3-8b-8192", "messages": [], "stream": True},
        GROQ_STREAM,
        "text/event-stream",
    )
    assert (call.provider, call.usage_known, call.input_tokens, call.output_tokens) == ("groq", True, 18, 73)
    tracker = SseUsageTracker("groq", "chat_completions")
    for i in range(0, len(GROQ_STREAM), 7):
        tracker.feed(GROQ_STREAM[i : i + 7])
    tracker.finish()
    assert (tracker.current.usage_known, tracker.current.input_tokens, tracker.current.output_tokens) == (
        True,
        18,
        73,
    )


def test_deepseek_cache_hit_tokens_are_cached_input() -> None:
    call = _parse(
        "api.deepseek.com:443",
        "/v1/chat/completions",
        {"model": "deepseek-chat", "messages": [], "stream": True},
        DEEPSEEK_FINAL,
        "text/event-stream",
    )
    assert (call.input_tokens, call.cached_input_tokens, call.output_tokens) == (832, 768, 324)


@pytest.mark.parametrize(
    ("host", "path"),
    [
        (
            "us-central1-aiplatform.googleapis.com:443",
            "/v1/projects/my-proj/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent",
        ),
        (
            "europe-west4-aiplatform.googleapis.com:443",
            "/v1beta1/projects/p/locations/europe-west4/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        ),
        (
            "aiplatform.googleapis.com:443",
            "/v1/projects/p/locations/global/publishers/google/models/gemini-2.5-flash:generateContent",
        ),
    ],
)
def test_gemini_on_vertex_ai(host: str, path: str) -> None:
    assert detect_api(host, path, None) == ("vertex_ai", "gemini_generate")
    call = _parse(
        host,
        path,
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        GEMINI_JSON,
        "application/json",
    )
    assert call.request_model == "gemini-2.5-flash"
    assert (call.usage_known, call.input_tokens, call.output_tokens) == (True, 5, 877 + 1058)


def test_vertex_path_elsewhere_needs_gemini_shape() -> None:
    path = "/v1/projects/p/locations/l/publishers/google/models/m:generateContent"
    assert detect_api("example.com:443", path, {"foo": 1}) is None
    assert detect_api("example.com:443", path, {"contents": []}) == ("vertex_ai", "gemini_generate")


def test_openai_responses_compact() -> None:
    assert detect_api("api.openai.com:443", "/v1/responses/compact", None) == ("openai", "responses")
    call = _parse(
        "api.openai.com:443",
        "/v1/responses/compact",
        {"model": "gpt-5.1-codex-max", "input": [{"role": "user", "content": "hi"}]},
        COMPACT_JSON,
        "application/json",
    )
    assert (call.usage_known, call.input_tokens, call.cached_input_tokens, call.output_tokens) == (
        True,
        41000,
        40000,
        900,
    )


# ---------------------------------------------------------------- metering a stream whatever its encoding


def _encoders() -> dict[str, bytes]:
    data = GROQ_STREAM
    return {
        "gzip": gzip.compress(data),
        "deflate": zlib.compress(data),
        "br": brotli.compress(data),
        "zstd": zstd.compress(data),
    }


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
@pytest.mark.parametrize("piece", [1, 5, 64, 100_000])
def test_stream_inflater_feeds_the_tracker_at_any_chunk_boundary(encoding: str, piece: int) -> None:
    wire = _encoders()[encoding]
    tracker = SseUsageTracker("groq", "chat_completions")
    inflate = StreamInflater(encoding, tracker.feed)
    for i in range(0, len(wire), piece):
        inflate(wire[i : i + piece])
    tracker.finish()
    assert not inflate.broken
    assert (tracker.current.usage_known, tracker.current.input_tokens, tracker.current.output_tokens) == (
        True,
        18,
        73,
    )
    assert tracker.response_model == "llama3-8b-8192"


def test_stream_inflater_stops_on_garbage_and_reports_nothing_wrong() -> None:
    tracker = SseUsageTracker("groq", "chat_completions")
    inflate = StreamInflater("gzip", tracker.feed)
    inflate(b"this is not gzip at all")
    inflate(gzip.compress(GROQ_STREAM))
    tracker.finish()
    assert inflate.broken and tracker.current.usage_known is False


def test_stream_inflater_output_per_step_is_bounded() -> None:
    bomb = gzip.compress(b"\n" * (64 << 20))  # 64 MiB of newlines in ~64 KiB
    steps: list[int] = []
    inflate = StreamInflater("gzip", lambda out: steps.append(len(out)))
    inflate(bomb)
    assert sum(steps) == 64 << 20 and max(steps) <= 64 * 1024


def test_whole_body_copy_is_bounded() -> None:
    copy = WholeBodyCopy(10)
    copy(b"12345")
    copy(b"6789")
    assert bytes(copy.data) == b"123456789" and not copy.overflow
    copy(b"ab")
    assert copy.overflow and bytes(copy.data) == b""
    copy(b"c")
    assert bytes(copy.data) == b""


def test_anthropic_one_hour_cache_creation_is_kept_apart() -> None:
    # Shape from Anthropic's Messages API reference (usage.cache_creation by TTL).
    body = b"""{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",
    "content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","stop_sequence":null,
    "usage":{"input_tokens":20,"cache_creation_input_tokens":4000,"cache_read_input_tokens":0,
    "cache_creation":{"ephemeral_5m_input_tokens":1000,"ephemeral_1h_input_tokens":3000},"output_tokens":5}}"""
    call = _parse(
        "api.anthropic.com:443",
        "/v1/messages",
        {"model": "claude-sonnet-4-5", "messages": []},
        body,
        "application/json",
    )
    assert (call.input_tokens, call.cache_write_tokens, call.cache_write_1h_tokens) == (4020, 4000, 3000)
