"""Usage extraction from literal provider wire formats (JSON, SSE, NDJSON), detection and contract drift."""

# Fixtures are the providers' wire bytes verbatim; re-wrapping their long SSE lines would change them.
# ruff: noqa: E501

from __future__ import annotations

import json

import pytest

from failcore.llm import LlmCall, SseUsageTracker, contract_drift, detect_api, parse_call
from failcore.llm.detect import request_model, request_streams
from failcore.llm.usage import OUTPUT_TEXT_CAP

JSON = "application/json"
SSE = "text/event-stream; charset=utf-8"


def _req(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def _parse(
    host: str, path: str, request: bytes | None, response: bytes, ctype: str, status: int = 200
) -> LlmCall:
    call = parse_call(
        host=host,
        path=path,
        request_body=request,
        response_body=response,
        response_content_type=ctype,
        status=status,
    )
    assert call is not None
    return call


# ---------------------------------------------------------------- OpenAI Chat Completions

CHAT_JSON = b"""{
  "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
  "object": "chat.completion",
  "created": 1741570283,
  "model": "gpt-4o-2024-08-06",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": null,
        "tool_calls": [
          {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\":\\"Paris\\"}"}},
          {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{\\"tz\\":\\"CET\\"}"}}
        ],
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "tool_calls"
    }
  ],
  "usage": {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 64, "audio_tokens": 0,
      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
  },
  "service_tier": "default",
  "system_fingerprint": "fp_fc9f1d7035"
}"""


def test_openai_chat_json_usage_cache_reasoning_and_tool_calls() -> None:
    call = _parse(
        "api.openai.com", "/v1/chat/completions", _req(model="gpt-4o", messages=[]), CHAT_JSON, JSON
    )
    assert (call.provider, call.api) == ("openai", "chat_completions")
    assert call.request_model == "gpt-4o"
    assert call.response_model == "gpt-4o-2024-08-06"
    assert call.stream is False
    assert (call.input_tokens, call.output_tokens, call.total_tokens) == (2006, 300, 2306)
    assert call.cached_input_tokens == 1920
    assert call.reasoning_tokens == 64
    assert call.cache_write_tokens is None
    assert call.usage_known is True
    assert call.finish_reason == "tool_calls"
    assert call.tool_calls == 2
    assert call.tool_inputs == ['{"city":"Paris"}', '{"tz":"CET"}']
    assert call.output_text is None


def test_openai_chat_legacy_function_call_counts_as_tool_call() -> None:
    body = b"""{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-3.5-turbo-0613",
"choices":[{"index":0,"message":{"role":"assistant","content":null,
"function_call":{"name":"lookup","arguments":"{\\"q\\": 1}"}},"finish_reason":"function_call"}],
"usage":{"prompt_tokens":50,"completion_tokens":12,"total_tokens":62}}"""
    call = _parse("api.openai.com", "/v1/chat/completions", None, body, JSON)
    assert call.tool_calls == 1
    assert call.finish_reason == "function_call"
    assert call.cached_input_tokens is None


CHAT_SSE_WITH_USAGE = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18",'
    b'"system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
    b'"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18",'
    b'"system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,'
    b'"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18",'
    b'"system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,'
    b'"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18",'
    b'"system_fingerprint":"fp_1","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],'
    b'"usage":null}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18",'
    b'"system_fingerprint":"fp_1","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":2,'
    b'"total_tokens":21,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,'
    b'"rejected_prediction_tokens":0}}}\n\n'
    b"data: [DONE]\n\n"
)

CHAT_REQUEST_STREAM_USAGE = _req(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "hi"}],
    stream=True,
    stream_options={"include_usage": True},
)


def test_openai_chat_sse_usage_from_final_chunk_and_text_assembled() -> None:
    call = _parse(
        "api.openai.com", "/v1/chat/completions", CHAT_REQUEST_STREAM_USAGE, CHAT_SSE_WITH_USAGE, SSE
    )
    assert call.stream is True
    assert call.usage_known is True
    assert (call.input_tokens, call.output_tokens, call.total_tokens) == (19, 2, 21)
    assert call.cached_input_tokens == 0
    assert call.output_text == "Hello world"
    assert call.finish_reason == "stop"
    assert call.tool_calls == 0


def test_openai_chat_sse_without_include_usage_reports_usage_unknown() -> None:
    without_usage = CHAT_SSE_WITH_USAGE.replace(
        CHAT_SSE_WITH_USAGE[
            CHAT_SSE_WITH_USAGE.index(
                b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk",'
                b'"created":1,"model":"gpt-4o-mini-2024-07-18",'
                b'"system_fingerprint":"fp_1","choices":[],'
            ) : CHAT_SSE_WITH_USAGE.index(b"data: [DONE]")
        ],
        b"",
    ).replace(b',"usage":null', b"")
    request = _req(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    call = _parse("api.openai.com", "/v1/chat/completions", request, without_usage, SSE)
    assert call.usage_known is False
    assert call.input_tokens is None and call.output_tokens is None and call.total_tokens is None
    assert call.output_text == "Hello world"
    assert call.finish_reason == "stop"


CHAT_SSE_TOOL_CALLS = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4.1","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function",'
    b'"function":{"name":"read_file","arguments":""}}]},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4.1","choices":[{"index":0,'
    b'"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"pa"}}]},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4.1","choices":[{"index":0,'
    b'"delta":{"tool_calls":[{"index":0,"function":{"arguments":"th\\": \\"/etc\\"}"}}]},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4.1","choices":[{"index":0,'
    b'"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"rm","arguments":'
    b'"{}"}}]},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4.1","choices":[{"index":0,'
    b'"delta":{},"finish_reason":"tool_calls"}]}\n\n'
    b"data: [DONE]\n\n"
)


def test_openai_chat_sse_counts_distinct_streamed_tool_call_indexes() -> None:
    request = _req(model="gpt-4.1", messages=[], stream=True)
    call = _parse("api.openai.com", "/v1/chat/completions", request, CHAT_SSE_TOOL_CALLS, SSE)
    assert call.tool_calls == 2
    assert call.tool_inputs == ['{"path": "/etc"}', "{}"]
    assert call.finish_reason == "tool_calls"
    assert call.usage_known is False


def test_truncated_chat_stream_keeps_partial_text_and_unknown_usage() -> None:
    cut = CHAT_SSE_WITH_USAGE[: CHAT_SSE_WITH_USAGE.index(b'" world"') + 3]
    call = _parse("api.openai.com", "/v1/chat/completions", CHAT_REQUEST_STREAM_USAGE, cut, SSE)
    assert call.output_text == "Hello"
    assert call.usage_known is False
    assert call.input_tokens is None
    assert call.finish_reason is None


def test_chat_sse_with_crlf_line_endings() -> None:
    crlf = CHAT_SSE_WITH_USAGE.replace(b"\n", b"\r\n")
    call = _parse("api.openai.com", "/v1/chat/completions", CHAT_REQUEST_STREAM_USAGE, crlf, SSE)
    assert (call.input_tokens, call.output_tokens, call.output_text) == (19, 2, "Hello world")


def test_error_response_has_status_and_unknown_usage() -> None:
    body = b"""{"error": {"message": "Rate limit reached", "type": "requests", "param": null,
"code": "rate_limit_exceeded"}}"""
    call = _parse("api.openai.com", "/v1/chat/completions", CHAT_REQUEST_STREAM_USAGE, body, JSON, status=429)
    assert call.status == 429
    assert call.usage_known is False
    assert call.output_tokens is None


def test_output_text_is_capped() -> None:
    huge = "x" * (OUTPUT_TEXT_CAP + 10)
    body = json.dumps(
        {
            "model": "gpt-4o",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": huge}, "finish_reason": "length"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        }
    ).encode()
    call = _parse("api.openai.com", "/v1/chat/completions", None, body, JSON)
    assert call.output_text is not None and len(call.output_text) == OUTPUT_TEXT_CAP
    assert call.output_truncated is True


def test_azure_deployment_supplies_model_when_request_has_none() -> None:
    body = CHAT_JSON.replace(b'"model": "gpt-4o-2024-08-06"', b'"model": "gpt-4o-2024-11-20"')
    call = _parse(
        "myres.openai.azure.com",
        "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21",
        _req(messages=[{"role": "user", "content": "x"}]),
        body,
        JSON,
    )
    assert (call.provider, call.api) == ("azure_openai", "chat_completions")
    assert call.request_model == "prod-gpt4o"
    assert call.response_model == "gpt-4o-2024-11-20"
    assert call.input_tokens == 2006


def test_legacy_completions_endpoint_on_openai_compatible_server() -> None:
    body = b"""{"id":"cmpl-1","object":"text_completion","created":1,"model":"meta-llama/Llama-3.1-8B",
"choices":[{"index":0,"text":" Paris.","logprobs":null,"finish_reason":"stop"}],
"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"""
    call = _parse(
        "10.0.0.5:8000",
        "/v1/completions",
        _req(model="meta-llama/Llama-3.1-8B", prompt="Capital?"),
        body,
        JSON,
    )
    assert (call.provider, call.api) == ("openai_compatible", "completions")
    assert call.output_text == " Paris."
    assert (call.input_tokens, call.output_tokens) == (7, 3)


# ---------------------------------------------------------------- OpenAI Responses

RESPONSES_JSON = b"""{
  "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
  "object": "response",
  "created_at": 1741476542,
  "status": "completed",
  "error": null,
  "incomplete_details": null,
  "model": "o4-mini-2025-04-16",
  "output": [
    {"type": "reasoning", "id": "rs_1", "summary": []},
    {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
     "arguments": "{\\"location\\":\\"Boston\\"}", "status": "completed"},
    {"type": "web_search_call", "id": "ws_1", "status": "completed"},
    {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
     "content": [{"type": "output_text", "text": "Checking the weather.", "annotations": []}]}
  ],
  "parallel_tool_calls": true,
  "text": {"format": {"type": "text"}},
  "usage": {
    "input_tokens": 1500,
    "input_tokens_details": {"cached_tokens": 1024},
    "output_tokens": 420,
    "output_tokens_details": {"reasoning_tokens": 384},
    "total_tokens": 1920
  },
  "user": null,
  "metadata": {}
}"""


def test_openai_responses_json() -> None:
    call = _parse(
        "api.openai.com", "/v1/responses", _req(model="o4-mini", input="weather?"), RESPONSES_JSON, JSON
    )
    assert (call.provider, call.api) == ("openai", "responses")
    assert (call.input_tokens, call.output_tokens, call.total_tokens) == (1500, 420, 1920)
    assert (call.cached_input_tokens, call.reasoning_tokens) == (1024, 384)
    assert call.tool_calls == 1  # web_search_call runs server-side and is not the agent's action
    assert call.tool_inputs == ['{"location":"Boston"}']
    assert call.output_text == "Checking the weather."
    assert call.finish_reason == "completed"


RESPONSES_SSE = b"""event: response.created
data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","created_at":1,"status":"in_progress","model":"gpt-4.1-2025-04-14","output":[],"usage":null}}

event: response.output_item.added
data: {"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{"id":"msg_1","type":"message","status":"in_progress","role":"assistant","content":[]}}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":2,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"{\\"ok\\":"}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":3,"item_id":"msg_1","output_index":0,"content_index":0,"delta":" true}"}

event: response.output_item.added
data: {"type":"response.output_item.added","sequence_number":4,"output_index":1,"item":{"id":"fc_1","type":"function_call","status":"in_progress","arguments":"","call_id":"call_1","name":"f"}}

event: response.function_call_arguments.delta
data: {"type":"response.function_call_arguments.delta","sequence_number":5,"item_id":"fc_1","output_index":1,"delta":"{}"}

event: response.output_item.done
data: {"type":"response.output_item.done","sequence_number":6,"output_index":1,"item":{"id":"fc_1","type":"function_call","status":"completed","arguments":"{}","call_id":"call_1","name":"f"}}

event: response.completed
data: {"type":"response.completed","sequence_number":7,"response":{"id":"resp_1","object":"response","created_at":1,"status":"completed","incomplete_details":null,"model":"gpt-4.1-2025-04-14","output":[{"id":"msg_1","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"{\\"ok\\": true}","annotations":[]}]},{"id":"fc_1","type":"function_call","status":"completed","arguments":"{}","call_id":"call_1","name":"f"}],"usage":{"input_tokens":37,"input_tokens_details":{"cached_tokens":0},"output_tokens":11,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":48}}}

"""


def test_openai_responses_sse_usage_in_completed_event() -> None:
    request = _req(model="gpt-4.1", input="x", stream=True, text={"format": {"type": "json_object"}})
    call = _parse("api.openai.com", "/v1/responses", request, RESPONSES_SSE, SSE)
    assert call.stream is True
    assert call.usage_known is True
    assert (call.input_tokens, call.output_tokens, call.total_tokens) == (37, 11, 48)
    assert call.output_text == '{"ok": true}'
    assert call.tool_calls == 1
    assert call.finish_reason == "completed"
    assert call.response_model == "gpt-4.1-2025-04-14"
    assert call.response_format == "json_object"


def test_openai_responses_output_item_of_unhashable_type_does_not_stop_metering() -> None:
    """An output item whose `type` is a list or an object (not a string) is no tool call; the answer's
    usage is still read, streamed (tracker) and whole (parse_call). It raised TypeError before."""
    odd = {"type": ["function_call"], "id": "fc_1", "arguments": "{}"}
    usage = {"input_tokens": 37, "output_tokens": 11, "total_tokens": 48}
    events = [
        {"type": "response.output_item.added", "output_index": 0, "item": odd},
        {"type": "response.output_item.done", "output_index": 0, "item": odd | {"type": {"a": 1}}},
        {"type": "response.completed", "response": {"status": "completed", "output": [odd], "usage": usage}},
    ]
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    tracker = SseUsageTracker("openai", "responses")
    tracker.feed(body)
    assert tracker.completed
    assert (tracker.current.input_tokens, tracker.current.output_tokens, tracker.tool_calls) == (37, 11, 0)
    document = json.dumps({"status": "completed", "output": [odd], "usage": usage}).encode()
    call = _parse(
        "api.openai.com", "/v1/responses", _req(model="gpt-4.1", input="x"), document, "application/json"
    )
    assert (call.input_tokens, call.output_tokens, call.usage_known, call.tool_calls) == (37, 11, True, 0)


def test_openai_responses_sse_incomplete_reason() -> None:
    body = RESPONSES_SSE.replace(b"event: response.completed", b"event: response.incomplete").replace(
        b'"type":"response.completed","sequence_number":7,"response":{"id":"resp_1","object":"response",'
        b'"created_at":1,"status":"completed","incomplete_details":null',
        b'"type":"response.incomplete","sequence_number":7,"response":{"id":"resp_1","object":"response",'
        b'"created_at":1,"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"}',
    )
    call = _parse("api.openai.com", "/v1/responses", _req(model="gpt-4.1", input="x", stream=True), body, SSE)
    assert call.finish_reason == "max_output_tokens"
    assert call.usage_known is True


def test_openai_responses_sse_cut_before_completion_has_unknown_usage() -> None:
    cut = RESPONSES_SSE[: RESPONSES_SSE.index(b"event: response.completed")]
    call = _parse("api.openai.com", "/v1/responses", _req(model="gpt-4.1", input="x", stream=True), cut, SSE)
    assert call.usage_known is False
    assert call.output_tokens is None
    assert call.output_text == '{"ok": true}'
    assert call.tool_calls == 1


# ---------------------------------------------------------------- Anthropic Messages

ANTHROPIC_JSON = b"""{
  "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
  "type": "message",
  "role": "assistant",
  "model": "claude-sonnet-4-5-20250929",
  "content": [
    {"type": "text", "text": "I'll check."},
    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"location": "San Francisco"}}
  ],
  "stop_reason": "tool_use",
  "stop_sequence": null,
  "usage": {
    "input_tokens": 21,
    "cache_creation_input_tokens": 1000,
    "cache_read_input_tokens": 3000,
    "output_tokens": 150,
    "service_tier": "standard"
  }
}"""


def test_anthropic_json_input_tokens_normalised_to_include_cache() -> None:
    request = _req(model="claude-sonnet-4-5", max_tokens=1024, messages=[{"role": "user", "content": "x"}])
    call = _parse("api.anthropic.com", "/v1/messages", request, ANTHROPIC_JSON, JSON)
    assert (call.provider, call.api) == ("anthropic", "messages")
    assert call.input_tokens == 21 + 1000 + 3000
    assert call.cached_input_tokens == 3000
    assert call.cache_write_tokens == 1000
    assert call.output_tokens == 150
    assert call.total_tokens == 4021 + 150
    assert call.usage_known is True
    assert call.tool_calls == 1
    assert call.tool_inputs == ['{"location":"San Francisco"}']
    assert call.finish_reason == "tool_use"
    assert call.output_text == "I'll check."


ANTHROPIC_SSE = b"""event: message_start
data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-opus-4-1-20250805","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":2048,"output_tokens":2}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", calling."}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\": \\"San Fra"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ncisco\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":null,"stop_sequence":null},"usage":{"output_tokens":40}}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":2048,"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""


def test_anthropic_sse_cumulative_message_delta_takes_latest_not_sum() -> None:
    request = _req(
        model="claude-opus-4-1", max_tokens=100, stream=True, messages=[{"role": "user", "content": "x"}]
    )
    call = _parse("api.anthropic.com", "/v1/messages", request, ANTHROPIC_SSE, SSE)
    assert call.output_tokens == 89  # not 2 + 40 + 89
    assert call.input_tokens == 472 + 2048
    assert call.cached_input_tokens == 2048
    assert call.cache_write_tokens == 0
    assert call.usage_known is True
    assert call.finish_reason == "tool_use"
    assert call.tool_calls == 1
    assert call.tool_inputs == ['{"location": "San Francisco"}']
    assert call.output_text == "Okay, calling."
    assert call.response_model == "claude-opus-4-1-20250805"


def test_anthropic_sse_without_final_delta_is_not_known_usage() -> None:
    cut = ANTHROPIC_SSE[: ANTHROPIC_SSE.index(b"event: message_delta")]
    call = _parse("api.anthropic.com", "/v1/messages", None, cut, SSE)
    assert call.usage_known is False
    assert call.input_tokens == 472 + 2048  # reported by message_start, kept as evidence
    assert call.finish_reason is None


def test_anthropic_compatible_host_detected_by_shape() -> None:
    assert detect_api("llm-gateway.internal", "/v1/messages", {"model": "x", "messages": []}) == (
        "anthropic_compatible",
        "messages",
    )


# ---------------------------------------------------------------- Gemini

GEMINI_JSON = b"""{
  "candidates": [
    {
      "content": {"parts": [{"text": "Let me look."}, {"functionCall": {"name": "search", "args": {"q": "cats"}}}],
                  "role": "model"},
      "finishReason": "STOP",
      "index": 0
    }
  ],
  "usageMetadata": {
    "promptTokenCount": 1200,
    "candidatesTokenCount": 80,
    "totalTokenCount": 1530,
    "cachedContentTokenCount": 1024,
    "thoughtsTokenCount": 250,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1200}]
  },
  "modelVersion": "gemini-2.5-flash",
  "responseId": "abc"
}"""


def test_gemini_generate_content_json() -> None:
    call = _parse(
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        _req(contents=[{"role": "user", "parts": [{"text": "cats"}]}]),
        GEMINI_JSON,
        JSON,
    )
    assert (call.provider, call.api) == ("gemini", "gemini_generate")
    assert call.request_model == "gemini-2.5-flash"
    assert call.input_tokens == 1200
    assert call.output_tokens == 80 + 250  # thoughts are billed as output
    assert call.reasoning_tokens == 250
    assert call.cached_input_tokens == 1024
    assert call.total_tokens == 1530
    assert call.tool_calls == 1
    assert call.output_text == "Let me look."
    assert call.finish_reason == "STOP"
    assert call.stream is False


GEMINI_SSE = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "Hel"}],"role": "model"},"index": 0}],'
    b'"usageMetadata": {"promptTokenCount": 9,"totalTokenCount": 9},"modelVersion": "gemini-2.0-flash"}\r\n\r\n'
    b'data: {"candidates": [{"content": {"parts": [{"text": "lo"}],"role": "model"},"finishReason": "STOP",'
    b'"index": 0}],"usageMetadata": {"promptTokenCount": 9,"candidatesTokenCount": 2,"totalTokenCount": 11},'
    b'"modelVersion": "gemini-2.0-flash"}\r\n\r\n'
)


def test_gemini_stream_generate_content_sse() -> None:
    call = _parse(
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
        _req(contents=[]),
        GEMINI_SSE,
        "text/event-stream",
    )
    assert call.stream is True
    assert (call.input_tokens, call.output_tokens, call.total_tokens) == (9, 2, 11)
    assert call.usage_known is True
    assert call.output_text == "Hello"


def test_gemini_stream_cut_before_finish_is_not_known_usage() -> None:
    cut = GEMINI_SSE[: GEMINI_SSE.index(b"\r\n\r\n") + 4]
    call = _parse(
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
        None,
        cut,
        "text/event-stream",
    )
    assert call.usage_known is False
    assert call.output_text == "Hel"


def test_gemini_stream_as_json_array_even_when_truncated() -> None:
    array = (
        b'[{"candidates": [{"content": {"parts": [{"text": "A"}]}, "index": 0}]},\r\n'
        b'{"candidates": [{"content": {"parts": [{"text": "B"}]}, "finishReason": "STOP", "index": 0}],'
        b' "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}}]'
    )
    path = "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
    complete = _parse("generativelanguage.googleapis.com", path, None, array, JSON)
    assert (complete.output_text, complete.output_tokens, complete.usage_known) == ("AB", 2, True)
    truncated = _parse("generativelanguage.googleapis.com", path, None, array[:-40], JSON)
    assert (truncated.output_text, truncated.usage_known) == ("A", False)


# ---------------------------------------------------------------- Ollama

OLLAMA_CHAT_NDJSON = (
    b'{"model":"llama3.2","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","content":"The"},'
    b'"done":false}\n'
    b'{"model":"llama3.2","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","content":" sky"},'
    b'"done":false}\n'
    b'{"model":"llama3.2","created_at":"2025-01-01T00:00:01Z","message":{"role":"assistant","content":""},'
    b'"done":true,"done_reason":"stop","total_duration":4883583458,"load_duration":1334875,'
    b'"prompt_eval_count":26,"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}\n'
)


def test_ollama_native_chat_ndjson_stream() -> None:
    request = _req(model="llama3.2", messages=[{"role": "user", "content": "why is the sky blue?"}])
    call = _parse("localhost:11434", "/api/chat", request, OLLAMA_CHAT_NDJSON, "application/x-ndjson")
    assert (call.provider, call.api) == ("ollama", "ollama_chat")
    assert call.stream is True  # Ollama streams unless "stream": false
    assert (call.input_tokens, call.output_tokens, call.total_tokens) == (26, 282, 308)
    assert call.output_text == "The sky"
    assert call.finish_reason == "stop"


def test_ollama_stream_without_ndjson_content_type_and_pretty_printed_document() -> None:
    request = _req(model="llama3.2", messages=[{"role": "user", "content": "x"}])
    streamed = _parse("127.0.0.1:11434", "/api/chat", request, OLLAMA_CHAT_NDJSON, "application/json")
    assert (streamed.output_tokens, streamed.output_text) == (282, "The sky")
    pretty = json.dumps(json.loads(OLLAMA_CHAT_NDJSON.splitlines()[-1]), indent=2).encode()
    document = _parse("127.0.0.1:11434", "/api/chat", request, pretty, "application/json")
    assert (document.input_tokens, document.output_tokens) == (26, 282)


def test_ollama_native_generate_json() -> None:
    body = (
        b'{"model":"llama3.2","created_at":"2025-01-01T00:00:00Z","response":"{\\"a\\": 1}","done":true,'
        b'"done_reason":"stop","context":[1,2,3],"prompt_eval_count":10,"eval_count":5}'
    )
    request = _req(model="llama3.2", prompt="json please", stream=False, format="json")
    call = _parse("ollama.lan:11434", "/api/generate", request, body, JSON)
    assert (call.api, call.stream, call.response_format) == ("ollama_generate", False, "json_object")
    assert (call.input_tokens, call.output_tokens) == (10, 5)
    assert contract_drift(call, json.loads(request)) is None


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("host", "path", "request_json", "expected"),
    [
        (
            "api.openai.com",
            "/v1/chat/completions",
            {"model": "gpt-4o", "messages": []},
            ("openai", "chat_completions"),
        ),
        ("api.openai.com:443", "/v1/responses", {"model": "o3", "input": "x"}, ("openai", "responses")),
        ("api.openai.com", "/v1/models", None, None),
        ("api.openai.com", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}, None),
        (
            "x.openai.azure.com",
            "/openai/deployments/d1/chat/completions?api-version=2024-10-21",
            None,
            ("azure_openai", "chat_completions"),
        ),
        (
            "x.openai.azure.com",
            "/openai/v1/responses",
            {"model": "d1", "input": "x"},
            ("azure_openai", "responses"),
        ),
        (
            "api.anthropic.com",
            "/v1/messages",
            {"model": "claude-3-5-haiku-latest", "messages": []},
            ("anthropic", "messages"),
        ),
        ("api.anthropic.com", "/v1/messages/count_tokens", {"messages": []}, None),
        # Creating a Message Batch spends tokens (charged at submission); listing batches does not.
        ("api.anthropic.com", "/v1/messages/batches", {"requests": []}, ("anthropic", "message_batches")),
        ("api.anthropic.com", "/v1/messages/batches", None, None),
        (
            "gw.internal",
            "/v1/messages/batches",
            {"requests": []},
            ("anthropic_compatible", "message_batches"),
        ),
        (
            "bedrock-runtime.us-east-1.amazonaws.com",
            "/model/anthropic.claude-3-5-sonnet-20240620-v1:0/invoke",
            None,
            ("bedrock", "bedrock_invoke"),
        ),
        ("gw.internal", "/model/m/converse-stream", None, ("bedrock", "bedrock_converse")),
        ("gw.internal", "/model/m/invoke-with-response-stream", None, ("bedrock", "bedrock_invoke")),
        ("gw.internal", "/model/m/list", None, None),
        (
            "openrouter.ai",
            "/api/v1/chat/completions",
            {"model": "openai/gpt-4o", "messages": []},
            ("openrouter", "chat_completions"),
        ),
        (
            "api.groq.com",
            "/openai/v1/chat/completions",
            {"model": "llama", "messages": []},
            ("groq", "chat_completions"),
        ),
        (
            "vllm.internal:8000",
            "/v1/chat/completions",
            {"model": "m", "messages": []},
            ("openai_compatible", "chat_completions"),
        ),
        ("vllm.internal:8000", "/v1/chat/completions", {"unrelated": True}, None),
        (
            "127.0.0.1:11434",
            "/v1/chat/completions",
            {"model": "llama3", "messages": []},
            ("ollama", "chat_completions"),
        ),
        ("127.0.0.1:11434", "/api/generate", None, ("ollama", "ollama_generate")),
        ("shop.example.com", "/api/chat", {"text": "hello support"}, None),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-pro:generateContent",
            None,
            ("gemini", "gemini_generate"),
        ),
        ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-pro:countTokens", None, None),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/openai/chat/completions",
            {"model": "g", "messages": []},
            ("gemini", "chat_completions"),
        ),
        ("example.com", "/index.html", None, None),
        # Spelled as a routing upstream still serves it: case (Express, ASP.NET Core), Gemini's `%3A`.
        ("api.openai.com", "/V1/Chat/Completions", None, ("openai", "chat_completions")),
        ("api.anthropic.com", "/V1/Messages", None, ("anthropic", "messages")),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-pro%3astreamGenerateContent",
            None,
            ("gemini", "gemini_generate"),
        ),
        ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-pro%3AcountTokens", None, None),
        ("example.com", "/V1/Chat/Completions", {"unrelated": True}, None),
    ],
)
def test_detect_api(
    host: str, path: str, request_json: dict | None, expected: tuple[str, str] | None
) -> None:
    assert detect_api(host, path, request_json) == expected


def test_gemini_model_and_stream_from_an_encoded_colon() -> None:
    path = "/v1beta/models/gemini-2.5-flash%3AstreamGenerateContent?alt=sse"
    assert request_model("gemini", "gemini_generate", path, None) == "gemini-2.5-flash"
    assert request_streams("gemini_generate", path, None)
    assert not request_streams("gemini_generate", "/v1beta/models/gemini-2.5-flash%3AgenerateContent", None)


def test_non_llm_exchange_parses_to_none() -> None:
    assert (
        parse_call(
            host="example.com",
            path="/",
            request_body=b"",
            response_body=b"<html>",
            response_content_type="text/html",
            status=200,
        )
        is None
    )


# ---------------------------------------------------------------- SseUsageTracker


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 64, 1000])
def test_tracker_anthropic_split_at_awkward_boundaries(chunk_size: int) -> None:
    tracker = SseUsageTracker("anthropic", "messages")
    for chunk in _chunks(ANTHROPIC_SSE, chunk_size):
        tracker.feed(chunk)
    current = tracker.current
    assert tracker.done is True
    assert (current.input_tokens, current.output_tokens, current.cached_input_tokens) == (2520, 89, 2048)
    assert current.usage_known is True
    assert current.output_chars == len("Okay, calling.")
    assert tracker.tool_calls == 1


def test_tracker_reports_progress_mid_stream() -> None:
    tracker = SseUsageTracker("anthropic", "messages")
    first_delta = ANTHROPIC_SSE.index(b"event: message_delta")
    second_delta = ANTHROPIC_SSE.index(b"event: message_delta", first_delta + 1)
    tracker.feed(ANTHROPIC_SSE[: first_delta + 10])
    assert tracker.current.input_tokens == 2520  # known from message_start, before any output
    assert tracker.current.usage_known is False
    assert tracker.done is False
    tracker.feed(ANTHROPIC_SSE[first_delta + 10 : second_delta])
    assert tracker.current.output_tokens == 40
    tracker.feed(ANTHROPIC_SSE[second_delta:])
    assert tracker.current.output_tokens == 89


@pytest.mark.parametrize("chunk_size", [1, 5, 13, 4096])
def test_tracker_chat_completions_with_include_usage(chunk_size: int) -> None:
    tracker = SseUsageTracker("openai", "chat_completions")
    for chunk in _chunks(CHAT_SSE_WITH_USAGE.replace(b"\n", b"\r\n"), chunk_size):
        tracker.feed(chunk)
    assert tracker.done is True
    assert (tracker.current.input_tokens, tracker.current.output_tokens) == (19, 2)
    assert tracker.current.output_chars == len("Hello world")


def test_tracker_ollama_ndjson_and_final_line_without_newline() -> None:
    tracker = SseUsageTracker("ollama", "ollama_chat")
    for chunk in _chunks(OLLAMA_CHAT_NDJSON.rstrip(b"\n"), 9):
        tracker.feed(chunk)
    assert tracker.current.usage_known is False
    tracker.finish()
    assert (tracker.current.input_tokens, tracker.current.output_tokens) == (26, 282)
    assert tracker.done is True


def test_tracker_salvages_usage_from_oversized_completed_event() -> None:
    big_text = "y" * (3 * 1024 * 1024)
    completed = {
        "type": "response.completed",
        "response": {
            "id": "resp_big",
            "status": "completed",
            "model": "gpt-4.1",
            "output": [{"type": "message", "content": [{"type": "output_text", "text": big_text}]}],
            "usage": {
                "input_tokens": 10,
                "input_tokens_details": {"cached_tokens": 4},
                "output_tokens": 700000,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 700010,
            },
        },
    }
    stream = b"event: response.completed\ndata: " + json.dumps(completed).encode() + b"\n\n"
    tracker = SseUsageTracker("openai", "responses")
    for chunk in _chunks(stream, 65536):
        tracker.feed(chunk)
    assert tracker.current.output_tokens == 700000
    assert tracker.current.cached_input_tokens == 4
    # State stays bounded: the decoder keeps edges of the oversized event, not the event itself.
    assert len(tracker._decoder._data) < 300 * 1024


# ---------------------------------------------------------------- contract drift


def _chat_call(content: str, request: dict) -> LlmCall:
    body = json.dumps(
        {
            "model": "gpt-4o",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
        }
    ).encode()
    return _parse("api.openai.com", "/v1/chat/completions", json.dumps(request).encode(), body, JSON)


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    ],
)
def test_drift_chat_response_format(response_format: dict) -> None:
    request = {"model": "gpt-4o", "messages": [], "response_format": response_format}
    assert contract_drift(_chat_call('{"a": [1, 2]}', request), request) is None
    reason = contract_drift(_chat_call('Sure! {"a": 1}', request), request)
    assert reason is not None
    assert reason.startswith("response is not valid JSON: Expecting value at line 1 column 1")


def test_drift_reports_line_and_column() -> None:
    request = {"model": "gpt-4o", "messages": [], "response_format": {"type": "json_object"}}
    assert contract_drift(_chat_call('{\n  "a": 1,\n  oops\n}', request), request) == (
        "response is not valid JSON: Expecting property name enclosed in double quotes at line 3 column 3"
    )


def test_no_drift_without_json_request_or_on_error_status() -> None:
    plain = {"model": "gpt-4o", "messages": []}
    assert contract_drift(_chat_call("just prose", plain), plain) is None
    request = {"model": "gpt-4o", "messages": [], "response_format": {"type": "json_object"}}
    call = _chat_call("not json", request)
    call.status = 500
    assert contract_drift(call, request) is None


def test_drift_responses_text_format() -> None:
    request = {"model": "gpt-4.1", "input": "x", "stream": True, "text": {"format": {"type": "json_object"}}}
    good = _parse("api.openai.com", "/v1/responses", json.dumps(request).encode(), RESPONSES_SSE, SSE)
    assert contract_drift(good, request) is None
    broken = RESPONSES_SSE.replace(b'"delta":" true}"', b'"delta":" tru')
    bad = _parse("api.openai.com", "/v1/responses", json.dumps(request).encode(), broken, SSE)
    assert contract_drift(bad, request) is not None


def _anthropic_tool_response(tool_input_json: str) -> bytes:
    return (
        b"event: message_start\ndata: "
        b'{"type":"message_start","message":{"model":"claude-haiku-4-5","usage":{"input_tokens":5,"output_tokens":1}}}'
        b"\n\nevent: content_block_start\ndata: "
        b'{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"emit","input":{}}}'
        b"\n\nevent: content_block_delta\ndata: "
        + json.dumps(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": tool_input_json},
            }
        ).encode()
        + b'\n\nevent: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use"},'
        b'"usage":{"output_tokens":9}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    )


def test_drift_anthropic_forced_tool() -> None:
    request = {
        "model": "claude-haiku-4-5",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "x"}],
        "tool_choice": {"type": "tool", "name": "emit"},
        "stream": True,
    }
    raw_request = json.dumps(request).encode()
    good = _parse("api.anthropic.com", "/v1/messages", raw_request, _anthropic_tool_response('{"k": 1}'), SSE)
    assert good.response_format == "tool_forced"
    assert contract_drift(good, request) is None
    broken = _parse("api.anthropic.com", "/v1/messages", raw_request, _anthropic_tool_response('{"k": '), SSE)
    assert (contract_drift(broken, request) or "").startswith("tool input is not valid JSON")
    array = _parse("api.anthropic.com", "/v1/messages", raw_request, _anthropic_tool_response("[1]"), SSE)
    assert contract_drift(array, request) == "tool input is not a JSON object: got list"
    text_only = ANTHROPIC_JSON.replace(
        b',\n    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"location": "San Francisco"}}',
        b"",
    )
    no_tool = _parse("api.anthropic.com", "/v1/messages", raw_request, text_only, JSON)
    assert contract_drift(no_tool, request) == "tool call was forced but the response contains no tool call"


def test_drift_anthropic_prefill_brace() -> None:
    request = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "json"}, {"role": "assistant", "content": "{"}],
    }

    def answer(text: str) -> LlmCall:
        body = json.dumps(
            {
                "type": "message",
                "model": "claude-sonnet-4-5-20250929",
                "stop_reason": "end_turn",
                "content": [{"type": "text", "text": text}],
                "usage": {"input_tokens": 3, "output_tokens": 4},
            }
        ).encode()
        return _parse("api.anthropic.com", "/v1/messages", json.dumps(request).encode(), body, JSON)

    good = answer('"name": "x"}')
    assert good.response_format == "json_prefill"
    assert contract_drift(good, request) is None
    assert (contract_drift(answer('"name": x}'), request) or "").startswith("response is not valid JSON")


def test_drift_anthropic_output_config_json_schema() -> None:
    request = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "x"}],
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
    }
    call = _parse("api.anthropic.com", "/v1/messages", json.dumps(request).encode(), ANTHROPIC_JSON, JSON)
    assert call.response_format == "json_schema"
    assert contract_drift(call, request) is not None  # "I'll check." is not JSON


def test_drift_gemini_response_mime_type() -> None:
    request = {
        "contents": [],
        "generationConfig": {"responseMimeType": "application/json", "responseSchema": {"type": "OBJECT"}},
    }
    call = _parse(
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        json.dumps(request).encode(),
        GEMINI_JSON,
        JSON,
    )
    assert call.response_format == "json_schema"
    assert contract_drift(call, request) is not None
    ok_body = GEMINI_JSON.replace(b'{"text": "Let me look."}', b'{"text": "{\\"q\\": 1}"}')
    ok = _parse(
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        json.dumps(request).encode(),
        ok_body,
        JSON,
    )
    assert contract_drift(ok, request) is None


def test_drift_openai_forced_function_arguments() -> None:
    request = {
        "model": "gpt-4o",
        "messages": [],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
    }
    call = _parse("api.openai.com", "/v1/chat/completions", json.dumps(request).encode(), CHAT_JSON, JSON)
    assert call.response_format == "tool_forced"
    assert contract_drift(call, request) is None
    bad = CHAT_JSON.replace(b'"arguments": "{\\"tz\\":\\"CET\\"}"', b'"arguments": "{\\"tz\\":"')
    broken = _parse("api.openai.com", "/v1/chat/completions", json.dumps(request).encode(), bad, JSON)
    assert (contract_drift(broken, request) or "").startswith("tool input is not valid JSON")


def test_to_dict_round_trips_through_json() -> None:
    call = _parse("api.anthropic.com", "/v1/messages", None, ANTHROPIC_JSON, JSON)
    data = json.loads(json.dumps(call.to_dict()))
    assert data["input_tokens"] == 4021
    assert data["provider"] == "anthropic"


@pytest.mark.parametrize(
    ("provider", "api", "stream", "completed"),
    [
        ("anthropic", "messages", b'event: message_stop\ndata: {"type":"message_stop"}\n\n', True),
        (
            "anthropic",
            "messages",
            b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"x"}}\n\n',
            False,
        ),
        ("openai", "chat_completions", b"data: [DONE]\n\n", True),
        ("openai", "chat_completions", b'data: {"error":{"message":"boom"}}\n\ndata: [DONE]\n\n', False),
        (
            "openai",
            "responses",
            b'data: {"type":"response.completed","response":{"status":"completed"}}\n\n',
            True,
        ),
        (
            "openai",
            "responses",
            b'data: {"type":"response.failed","response":{"status":"failed"}}\n\n',
            False,
        ),
        ("openai", "responses", b'data: {"type":"error","message":"boom"}\n\n', False),
    ],
)
def test_a_stream_is_completed_only_by_its_normal_final_event(provider, api, stream, completed) -> None:
    """A client hanging up after `completed` has the whole answer; after an error event it has not."""
    tracker = SseUsageTracker(provider, api)
    tracker.feed(stream)
    assert tracker.done is True
    assert tracker.completed is completed
