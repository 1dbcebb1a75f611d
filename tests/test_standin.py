"""The stand-in must be indistinguishable from the real providers for unmodified clients:
these tests drive it with the official SDKs, httpx, curl and a raw TLS WebSocket client."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from cryptography import x509
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from failcore.compat import zstd
from failcore.demo.handler import BINARY_BODY, SAMPLE_DOCUMENT
from failcore.demo.replies import DEFAULT_USAGE, arguments_for_schema, split_fixed, split_words
from failcore.demo.server import StandIn

REPO_ROOT = Path(__file__).resolve().parents[1]
USAGE_HEADER = {
    "x-standin-usage": json.dumps(
        {"input": 120, "output": 30, "cached": 20, "cache_write": 5, "reasoning": 4}
    )
}
READ_FILE_SCHEMA = {
    "type": "object",
    "properties": {"path": {"type": "string"}, "limit": {"type": "integer"}},
    "required": ["path"],
}


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    with StandIn() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_recording(standin: StandIn) -> None:
    standin.reset()


@pytest.fixture(scope="module")
def trust(standin: StandIn) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(standin.ca_path))
    # Python 3.13 turns strict X.509 checks on by default; the certificate must survive them.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


@pytest.fixture(scope="module")
def http(trust: ssl.SSLContext) -> Iterator[httpx.Client]:
    with httpx.Client(verify=trust, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def openai_client(standin: StandIn, http: httpx.Client) -> openai.OpenAI:
    return openai.OpenAI(base_url=standin.url + "/v1", api_key="sk-test", http_client=http, max_retries=0)


@pytest.fixture(scope="module")
def anthropic_client(standin: StandIn, trust: ssl.SSLContext) -> Iterator[anthropic.Anthropic]:
    # This anthropic release is built on httpx2 and refuses plain httpx clients.
    with httpx2.Client(verify=trust, timeout=10) as transport:
        yield anthropic.Anthropic(
            base_url=standin.url, api_key="sk-ant-test", http_client=transport, max_retries=0
        )


# -- certificate and transport ------------------------------------------------------------------


def test_certificate_files_are_private_and_name_the_loopback(tmp_path: Path) -> None:
    workdir = tmp_path / "keys"
    with StandIn(workdir=workdir) as server:
        key_file = workdir / "standin-key.pem"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
        assert server.ca_path.parent == workdir
        cert = x509.load_pem_x509_certificate(server.ca_path.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert key_file.exists(), "a caller-provided workdir is left in place"


def test_default_workdir_is_temporary_and_removed_on_stop() -> None:
    server = StandIn().start()
    ca_path = server.ca_path
    try:
        assert not ca_path.resolve().is_relative_to(REPO_ROOT)
        assert stat.S_IMODE(ca_path.parent.stat().st_mode) == 0o700
    finally:
        server.stop()
    assert not ca_path.parent.exists()


def test_untrusting_client_is_refused(standin: StandIn) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(standin.url + "/json")


def _free_on_127_0_0_1(port: int) -> bool:
    """Whether nothing else holds 127.0.0.1:`port` (the port the kernel gave 127.0.0.2 may be in use
    there by another test's listener: a connection would then be accepted by that one)."""
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def test_binds_only_the_given_host_and_certifies_it() -> None:
    for _ in range(10):
        with StandIn(host="127.0.0.2") as server:
            context = ssl.create_default_context(cafile=str(server.ca_path))
            assert httpx.get(server.url + "/json", verify=context).json() == SAMPLE_DOCUMENT
            if not _free_on_127_0_0_1(server.port):
                continue  # another port: this one is someone else's on 127.0.0.1
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
            return
    pytest.fail("every port given to 127.0.0.2 was in use on 127.0.0.1")


def test_stop_closes_the_listener() -> None:
    server = StandIn(tls=False).start()
    port = server.port
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_plain_http_mode_serves_the_same_endpoints() -> None:
    with StandIn(tls=False) as server:
        assert server.url.startswith("http://127.0.0.1:")
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "plain"}])
        assert reply.choices[0].message.content == "Echo: plain"
        with pytest.raises(RuntimeError):
            _ = server.ca_path


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_trusts_the_cert_decodes_and_keeps_the_connection_alive(standin: StandIn) -> None:
    by_name = f"https://localhost:{standin.port}/json"
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail",
            "--cacert",
            str(standin.ca_path),
            "--compressed",
            "-w",
            "\n%{num_connects}\n",
            standin.url + "/br",
            by_name,
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert json.loads(lines[0]) == SAMPLE_DOCUMENT
    assert json.loads(lines[2]) == SAMPLE_DOCUMENT
    # The second URL uses a different host name, so curl opens a second connection; repeat the
    # first to observe keep-alive reuse.
    assert lines[1] == "1"
    reuse = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail",
            "--cacert",
            str(standin.ca_path),
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{num_connects}\n",
            standin.url + "/json",
            standin.url + "/json",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert reuse.stdout.split() == ["1", "0"]


# -- OpenAI Chat Completions --------------------------------------------------------------------


def test_chat_completion_json_has_the_exact_shape(standin: StandIn, http: httpx.Client) -> None:
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello world"}]}
    response = http.post(standin.url + "/v1/chat/completions", headers=USAGE_HEADER, json=request)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-4o-mini"
    assert body["system_fingerprint"]
    assert body["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Echo: hello world",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": 120,
        "completion_tokens": 30,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 20, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 4,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def test_openai_sdk_chat_completion(openai_client: openai.OpenAI) -> None:
    completion = openai_client.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what is up"}]},
        ],
    )
    assert completion.choices[0].message.content == "Echo: what is up"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == DEFAULT_USAGE["chat"].input
    assert completion.usage.completion_tokens == DEFAULT_USAGE["chat"].output


def test_openai_sdk_reply_override(openai_client: openai.OpenAI) -> None:
    completion = openai_client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "ignored"}],
        extra_headers={"x-standin-reply": "custom answer"},
    )
    assert completion.choices[0].message.content == "custom answer"


def test_chat_stream_reports_usage_only_when_asked(openai_client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "stream me three words"}]
    plain = list(openai_client.chat.completions.create(model="gpt-4o", messages=messages, stream=True))
    assert all(chunk.usage is None for chunk in plain)
    assert all(chunk.object == "chat.completion.chunk" for chunk in plain)
    assert plain[0].choices[0].delta.role == "assistant"
    assert plain[-1].choices[0].finish_reason == "stop"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in plain)
    assert text == "Echo: stream me three words"
    assert len([c for c in plain if c.choices[0].delta.content]) == 5, "one chunk per word"

    counted = list(
        openai_client.chat.completions.create(
            model="gpt-4o",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=USAGE_HEADER,
        )
    )
    assert [c.usage is not None for c in counted] == [False] * (len(counted) - 1) + [True]
    last = counted[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (120, 30, 150)
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 20


def test_chat_stream_wire_format(standin: StandIn, http: httpx.Client) -> None:
    request = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with http.stream("POST", standin.url + "/v1/chat/completions", json=request) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["transfer-encoding"] == "chunked"
        raw = response.read().decode()
    frames = raw.split("\n\n")
    assert frames[-1] == ""
    assert frames[-2] == "data: [DONE]"
    assert all(frame.startswith("data: {") for frame in frames[:-2])


def test_chat_tool_call_round_trip(openai_client: openai.OpenAI) -> None:
    tools: Any = [
        {"type": "function", "function": {"name": "read_file", "parameters": READ_FILE_SCHEMA}},
        {"type": "function", "function": {"name": "other", "parameters": {}}},
    ]
    messages: Any = [{"role": "user", "content": "/etc/hosts"}]
    first = openai_client.chat.completions.create(model="gpt-4o", messages=messages, tools=tools)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "read_file"
    assert json.loads(call.function.arguments) == {"path": "/etc/hosts", "limit": 1}

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "127.0.0.1 localhost"},
    ]
    second = openai_client.chat.completions.create(model="gpt-4o", messages=messages, tools=tools)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Tool said: 127.0.0.1 localhost"


def test_chat_streamed_tool_call_splits_arguments(openai_client: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "function": {"name": "read_file", "parameters": READ_FILE_SCHEMA}}]
    chunks = list(
        openai_client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "/var/log/syslog"}],
            tools=tools,
            stream=True,
            extra_headers={"x-standin-tool-args": json.dumps({"path": "/root/.ssh/id_rsa"})},
        )
    )
    deltas = [
        tc
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
        for tc in c.choices[0].delta.tool_calls
    ]
    assert deltas[0].id and deltas[0].function is not None and deltas[0].function.name == "read_file"
    pieces = [d.function.arguments for d in deltas if d.function and d.function.arguments]
    assert len(pieces) > 1
    assert json.loads("".join(pieces)) == {"path": "/root/.ssh/id_rsa"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_bad_control_header_is_a_provider_style_400(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="x-standin-usage"):
        openai_client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-standin-usage": "{not json"},
        )


# -- OpenAI Responses ---------------------------------------------------------------------------


def test_responses_json(openai_client: openai.OpenAI) -> None:
    response = openai_client.responses.create(model="gpt-4.1", input="tell me", extra_headers=USAGE_HEADER)
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "gpt-4.1"
    assert response.output_text == "Echo: tell me"
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert response.usage is not None
    assert response.usage.input_tokens == 120
    assert response.usage.input_tokens_details.cached_tokens == 20
    assert response.usage.output_tokens == 30
    assert response.usage.output_tokens_details.reasoning_tokens == 4
    assert response.usage.total_tokens == 150


def test_responses_stream_event_sequence_and_final_usage(openai_client: openai.OpenAI) -> None:
    user_input: Any = [{"role": "user", "content": "a b c"}]
    with openai_client.responses.stream(model="gpt-4.1", input=user_input) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Echo: a b c"
    assert final.output_text == "Echo: a b c"
    assert final.usage is not None
    assert final.usage.input_tokens == DEFAULT_USAGE["responses"].input
    assert final.usage.output_tokens == DEFAULT_USAGE["responses"].output


def test_responses_sse_frames_name_their_event(standin: StandIn, http: httpx.Client) -> None:
    request = {"model": "m", "input": "x", "stream": True}
    raw = http.post(standin.url + "/v1/responses", json=request).text
    for frame in filter(None, raw.split("\n\n")):
        event_line, data_line = frame.split("\n")
        event_type = event_line.removeprefix("event: ")
        assert json.loads(data_line.removeprefix("data: "))["type"] == event_type


def test_responses_function_call_round_trip(openai_client: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "name": "read_file", "parameters": READ_FILE_SCHEMA, "strict": False}]
    with openai_client.responses.stream(model="gpt-4.1", input="/etc/passwd", tools=tools) as stream:
        argument_deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        first = stream.get_final_response()
    call = first.output[0]
    assert call.type == "function_call"
    assert call.name == "read_file"
    assert json.loads(call.arguments) == {"path": "/etc/passwd", "limit": 1}
    assert len(argument_deltas) > 1 and "".join(argument_deltas) == call.arguments

    second = openai_client.responses.create(
        model="gpt-4.1",
        tools=tools,
        input=[
            {"role": "user", "content": "/etc/passwd"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "root:x:0:0"},
        ],
    )
    assert second.output_text == "Tool said: root:x:0:0"


# -- Anthropic Messages -------------------------------------------------------------------------


def test_anthropic_messages_json(anthropic_client: anthropic.Anthropic) -> None:
    message = anthropic_client.messages.create(
        model="claude-standin",
        max_tokens=64,
        messages=[{"role": "user", "content": "bonjour"}],
        extra_headers=USAGE_HEADER,
    )
    assert message.id.startswith("msg_")
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "claude-standin"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "Echo: bonjour")]
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (120, 30)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (20, 5)


def test_anthropic_stream_final_usage_is_the_last_cumulative(anthropic_client: anthropic.Anthropic) -> None:
    with anthropic_client.messages.stream(
        model="claude-x",
        max_tokens=64,
        messages=[{"role": "user", "content": "one two three"}],
        extra_headers=USAGE_HEADER,
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    cumulative = [e.usage.output_tokens for e in events if e.type == "message_delta"]
    assert cumulative == [3, 30]
    assert final.usage.output_tokens == 30, "cumulative counts must overwrite, never add up"
    assert final.usage.input_tokens == 120
    assert "".join(e.text for e in events if e.type == "text") == "Echo: one two three"
    assert final.content[0].type == "text" and final.content[0].text == "Echo: one two three"


def test_anthropic_sse_wire_events(standin: StandIn, http: httpx.Client) -> None:
    request = {
        "model": "c",
        "max_tokens": 5,
        "stream": True,
        "messages": [{"role": "user", "content": "hey you"}],
    }
    raw = http.post(standin.url + "/v1/messages", json=request).text
    frames = [frame.split("\n") for frame in filter(None, raw.split("\n\n"))]
    names = [lines[0].removeprefix("event: ") for lines in frames]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_delta",
        "message_stop",
    ]
    start = json.loads(frames[0][1].removeprefix("data: "))
    assert start["message"]["usage"]["output_tokens"] == 1
    assert start["message"]["usage"]["input_tokens"] == DEFAULT_USAGE["messages"].input


def test_anthropic_tool_use_round_trip(anthropic_client: anthropic.Anthropic) -> None:
    tools: Any = [
        {
            "name": "run_shell",
            "description": "run",
            "input_schema": {
                "type": "object",
                "properties": {"command": {"type": "string"}, "sudo": {"type": "boolean"}},
            },
        }
    ]
    messages: Any = [{"role": "user", "content": "rm -rf /tmp/x"}]
    with anthropic_client.messages.stream(
        model="claude-x", max_tokens=64, messages=messages, tools=tools
    ) as stream:
        json_pieces = [
            e.delta.partial_json
            for e in stream
            if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
        ]
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    block = first.content[0]
    assert block.type == "tool_use" and block.name == "run_shell"
    assert block.input == {"command": "rm -rf /tmp/x", "sudo": True}
    assert len(json_pieces) > 1

    messages += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True)]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": block.id,
                    "content": [{"type": "text", "text": "done"}],
                }
            ],
        },
    ]
    second = anthropic_client.messages.create(model="claude-x", max_tokens=64, messages=messages, tools=tools)
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text == "Tool said: done"


# -- SSE pacing -------------------------------------------------------------------------------


def _arrival_times(client: httpx.Client, method: str, url: str, marker: bytes, **kwargs: Any) -> list[float]:
    """When each complete SSE frame containing ``marker`` reached the client, in seconds after the
    request was sent. The server sleeps its gap between frames, so frame k cannot arrive before k gaps:
    a busy machine only delays frames, it cannot make that bound fail (a gap between two arrivals can
    shrink when the first one is late, so the tests check the bound and the stream's whole span)."""
    arrivals: list[float] = []
    buffer = b""
    sent = time.monotonic()
    with client.stream(method, url, **kwargs) as response:
        for data in response.iter_raw():
            buffer += data
            *frames, buffer = buffer.split(b"\n\n")
            arrivals += [time.monotonic() - sent for frame in frames if marker in frame]
    return arrivals


def test_sse_gap_paces_generic_events(standin: StandIn, http: httpx.Client) -> None:
    arrivals = _arrival_times(http, "GET", standin.url + "/sse?n=3&gap=0.5", b"data: event")
    assert len(arrivals) == 3
    assert all(arrival >= k * 0.5 for k, arrival in enumerate(arrivals)), arrivals
    assert arrivals[-1] - arrivals[0] >= 0.5, arrivals  # spread over the stream, not one burst at the end


def test_sse_gap_header_paces_provider_stream(standin: StandIn, http: httpx.Client) -> None:
    request = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    arrivals = _arrival_times(
        http,
        "POST",
        standin.url + "/v1/chat/completions",
        b"data:",
        json=request,
        headers={"x-standin-gap": "0.25"},
    )
    # role chunk, 2 words, finish chunk, [DONE]
    assert len(arrivals) == 5
    assert all(arrival >= k * 0.25 for k, arrival in enumerate(arrivals)), arrivals
    assert arrivals[-1] - arrivals[0] >= 0.5, arrivals


def test_server_default_gap() -> None:
    with StandIn(tls=False, sse_gap=0.3) as server, httpx.Client() as client:
        arrivals = _arrival_times(client, "GET", server.url + "/sse?n=2", b"data: event")
    assert len(arrivals) == 2 and arrivals[1] >= 0.3, arrivals
    assert arrivals[1] - arrivals[0] >= 0.15, arrivals


# -- generic endpoints --------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_content_encodings_decode_with_httpx(standin: StandIn, http: httpx.Client, encoding: str) -> None:
    response = http.get(standin.url + "/" + encoding)
    assert response.headers["content-encoding"] == encoding
    assert int(response.headers["content-length"]) < len(json.dumps(SAMPLE_DOCUMENT))
    body = response.content
    if encoding == "zstd" and body.startswith(b"\x28\xb5\x2f\xfd"):
        body = zstd.decompress(body)  # httpx decodes zstd only with the zstandard package
    assert json.loads(body) == SAMPLE_DOCUMENT


@pytest.mark.parametrize("chunked", [False, True])
def test_big_body_streams_its_full_size(standin: StandIn, http: httpx.Client, chunked: bool) -> None:
    url = standin.url + "/big?mb=5" + ("&chunked=1" if chunked else "")
    received = 0
    with http.stream("GET", url) as response:
        if chunked:
            assert "content-length" not in response.headers
            assert response.headers["transfer-encoding"] == "chunked"
        else:
            assert response.headers["content-length"] == str(5 * 1024 * 1024)
        for piece in response.iter_bytes():
            received += len(piece)
    assert received == 5 * 1024 * 1024


def test_binary_status_json_and_not_found(standin: StandIn, http: httpx.Client) -> None:
    binary = http.get(standin.url + "/binary")
    assert binary.headers["content-type"] == "application/octet-stream"
    assert binary.content == BINARY_BODY and b"\x00" in binary.content

    teapot = http.get(standin.url + "/status/418")
    assert teapot.status_code == 418 and teapot.json()["error"]["code"] == 418
    created = http.get(standin.url + "/status/201")
    assert created.status_code == 201 and created.json() == {"status": 201, "reason": "Created"}
    no_content = http.get(standin.url + "/status/204")
    assert no_content.status_code == 204 and no_content.content == b""
    assert http.get(standin.url + "/status/99").status_code == 400

    assert http.get(standin.url + "/json").json() == SAMPLE_DOCUMENT
    missing = http.get(standin.url + "/nowhere")
    assert missing.status_code == 404 and "nowhere" in missing.json()["error"]["message"]


def test_echo_returns_text_and_base64(standin: StandIn, http: httpx.Client) -> None:
    text = http.post(standin.url + "/echo?x=1", content=b"plain words", headers={"X-Probe": "yes"}).json()
    assert text["method"] == "POST" and text["path"] == "/echo?x=1"
    assert text["body"] == "plain words"
    assert ["X-Probe", "yes"] in text["headers"]

    def generate() -> Iterator[bytes]:
        yield b"\xff\x00"
        yield b"\xfe"

    binary = http.put(standin.url + "/echo", content=generate()).json()  # chunked upload
    assert binary["body"] is None
    assert base64.b64decode(binary["body_base64"]) == b"\xff\x00\xfe"


def test_slow_and_drop(standin: StandIn, http: httpx.Client) -> None:
    started = time.monotonic()
    assert http.get(standin.url + "/slow?seconds=0.3").json() == {"slept": 0.3}
    assert time.monotonic() - started >= 0.3
    with pytest.raises(httpx.RemoteProtocolError):
        http.get(standin.url + "/drop")
    assert http.get(standin.url + "/json").status_code == 200, "the client recovers on a new connection"


class _WebSocketClient:
    def __init__(self, standin: StandIn, context: ssl.SSLContext) -> None:
        raw = socket.create_connection((standin.host, standin.port), timeout=5)
        self.sock = context.wrap_socket(raw, server_hostname=standin.host)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: deque[Event] = deque()
        self.send(Request(host=f"{standin.host}:{standin.port}", target="/ws"))

    def send(self, event: Event) -> None:
        self.sock.sendall(self.ws.send(event))

    def next_event(self) -> Event:
        while not self.pending:
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
            if not data and not self.pending:
                raise ConnectionError("closed without an event")
        return self.pending.popleft()


def test_websocket_echo(standin: StandIn, trust: ssl.SSLContext) -> None:
    client = _WebSocketClient(standin, trust)
    try:
        assert isinstance(client.next_event(), AcceptConnection)
        client.send(TextMessage(data="héllo"))
        echoed_text = client.next_event()
        assert isinstance(echoed_text, TextMessage) and echoed_text.data == "héllo"
        client.send(BytesMessage(data=b"\x00\x01\xff" * 1000))
        echoed_bytes = client.next_event()
        assert isinstance(echoed_bytes, BytesMessage) and echoed_bytes.data == b"\x00\x01\xff" * 1000
        client.send(Ping(payload=b"p"))
        pong = client.next_event()
        assert isinstance(pong, Pong) and pong.payload == b"p"
        client.send(CloseConnection(code=1000, reason="bye"))
        closing = client.next_event()
        assert isinstance(closing, CloseConnection) and closing.code == 1000
    finally:
        client.sock.close()
    assert standin.requests[-1].path == "/ws"


def test_websocket_path_without_upgrade(standin: StandIn, http: httpx.Client) -> None:
    assert http.get(standin.url + "/ws").status_code == 426


# -- recording and concurrency ------------------------------------------------------------------


def test_requests_are_recorded(standin: StandIn, http: httpx.Client) -> None:
    before = time.time()
    http.post(standin.url + "/v1/messages?beta=true", content=b"{bad json", headers={"X-Api-Key": "k"})
    http.get(standin.url + "/json")
    assert standin.request_count() == 2
    assert standin.request_count("/v1/") == 1
    recorded = standin.requests[0]
    assert (recorded.method, recorded.path, recorded.body) == ("POST", "/v1/messages?beta=true", b"{bad json")
    assert ("X-Api-Key", "k") in recorded.headers
    assert recorded.header("x-api-key") == "k"
    assert before <= recorded.ts <= time.time()
    standin.reset()
    assert standin.requests == [] and standin.request_count() == 0


def test_concurrent_keep_alive_clients(standin: StandIn, trust: ssl.SSLContext) -> None:
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            with httpx.Client(verify=trust, timeout=10) as client:
                for _ in range(10):
                    assert client.get(standin.url + "/json").status_code == 200
        except BaseException as exc:  # collected and reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert standin.request_count("/json") == 80


# -- pure helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "one", "Echo: two  words ", " lead\nand\ttabs"])
def test_split_words_round_trips(text: str) -> None:
    assert "".join(split_words(text)) == text


def test_split_fixed_and_schema_arguments() -> None:
    assert "".join(split_fixed('{"a": "long value"}', 4)) == '{"a": "long value"}'
    schema = {
        "properties": {
            "s": {"type": "string"},
            "n": {"type": "number"},
            "b": {"type": "boolean"},
            "a": {"type": "array"},
            "o": {"type": "object"},
            "u": {},
        }
    }
    expected = {"s": "txt", "n": 1, "b": True, "a": [], "o": {}, "u": "txt"}
    assert arguments_for_schema(schema, "txt") == expected
    assert arguments_for_schema(None, "txt") == {}
