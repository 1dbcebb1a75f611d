"""Agents and helpers the replay and diff tests share: real SDK agent loops (OpenAI, Anthropic) run
through a proxy against the stand-in, and the options that make a proxy replay a recorded run."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anthropic
import httpx
import httpx2
import openai
import orjson

from tests.helpers import ProxyThread, network_events, read_tape

if TYPE_CHECKING:
    from failcore.demo.server import StandIn

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "look something up",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    }
]
# A gap between SSE events so the recorded chunks are the events, not whatever TCP coalesced.
SSE_GAP = {"x-standin-gap": "0.01"}
USAGE = {"x-standin-usage": '{"input": 100, "output": 20}'}


class RawCapture(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, sink: list[bytes]) -> None:
        self.inner = inner
        self.sink = sink

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.sink.append(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class CapturingTransport(httpx.BaseTransport):
    """Keeps the raw body chunks of every response as the client received them."""

    def __init__(self, inner: httpx.HTTPTransport) -> None:
        self.inner = inner
        self.responses: list[list[bytes]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        chunks: list[bytes] = []
        self.responses.append(chunks)
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=RawCapture(response.stream, chunks),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.inner.close()


@dataclass
class OpenAiAgent:
    proxy: ProxyThread
    upstream: StandIn
    transport: CapturingTransport = field(init=False)
    client: openai.OpenAI = field(init=False)

    def __post_init__(self) -> None:
        trust = ssl.create_default_context(cafile=str(self.proxy.ca_cert))
        self.transport = CapturingTransport(httpx.HTTPTransport(proxy=self.proxy.url, verify=trust))
        self.client = openai.OpenAI(
            base_url=self.upstream.url + "/v1",
            api_key="sk-test-replay-0123456789",
            http_client=httpx.Client(transport=self.transport, timeout=30),
            default_headers={**SSE_GAP, **USAGE},
            max_retries=0,
        )

    def _stream(
        self, messages: list[dict[str, Any]], *, tools: bool = True
    ) -> tuple[str, list[dict[str, Any]]]:
        text, calls = "", {}
        stream = self.client.chat.completions.create(
            model="gpt-4o-mini",
            messages=messages,  # type: ignore[arg-type]
            tools=TOOLS if tools else openai.NOT_GIVEN,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                for call in choice.delta.tool_calls or []:
                    slot = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                    slot["id"] = call.id or slot["id"]
                    if call.function is not None:
                        slot["name"] += call.function.name or ""
                        slot["arguments"] += call.function.arguments or ""
        return text, [calls[i] for i in sorted(calls)]

    def run(self, question: str, followup: str | None = None) -> list[str]:
        """user → tool call → tool result → answer (→ follow-up question → answer)."""
        messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
        transcript = []
        _, calls = self._stream(messages)
        assert calls, "the stand-in answers the first turn with a tool call"
        call = calls[0]
        transcript.append(f"call {call['name']}({call['arguments']})")
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": call["arguments"]},
                    }
                ],
            }
        )
        query = orjson.loads(call["arguments"])["query"]
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": f"42 results for {query}"})
        answer, _ = self._stream(messages)
        transcript.append(answer)
        if followup is not None:
            messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": followup}]
            final, _ = self._stream(messages, tools=False)
            transcript.append(final)
        return transcript


def run_anthropic_agent(proxy: ProxyThread, upstream: StandIn, question: str) -> list[str]:
    trust = ssl.create_default_context(cafile=str(proxy.ca_cert))
    tools = [{"name": "lookup", "input_schema": TOOLS[0]["function"]["parameters"]}]  # type: ignore[index]
    transcript = []
    with httpx2.Client(proxy=proxy.url, verify=trust, timeout=30) as http:
        client = anthropic.Anthropic(
            base_url=upstream.url, api_key="sk-ant-replay-0123456789", http_client=http, max_retries=0
        )
        messages: list[dict[str, Any]] = [{"role": "user", "content": question}]

        def turn() -> Any:
            with client.messages.stream(
                model="claude-sonnet-4-5",
                max_tokens=256,
                messages=messages,  # type: ignore[arg-type]
                tools=tools,  # type: ignore[arg-type]
                metadata={"user_id": f"session-{time.time_ns()}"},
                extra_headers=SSE_GAP,
            ) as stream:
                return stream.get_final_message()

        first = turn()
        use = next(block for block in first.content if block.type == "tool_use")
        transcript.append(f"call {use.name}({orjson.dumps(use.input).decode()})")
        messages.append({"role": "assistant", "content": [block.model_dump() for block in first.content]})
        messages.append(
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 degrees"}],
            }
        )
        final = turn()
        transcript.append("".join(block.text for block in final.content if block.type == "text"))
    return transcript


def run_id(proxy: ProxyThread) -> str:
    assert proxy.proxy is not None
    return proxy.proxy.session.run_id


def run_network(tape: Path, run: str) -> list[dict[str, Any]]:
    return [e for e in network_events(read_tape(tape)) if e["run"] == run]


def replay_sets(tape: Path, run: str, on_miss: str = "fail", *extra: str) -> list[str]:
    return [f"failcore_replay={tape}:{run}", f"failcore_replay_on_miss={on_miss}", *extra]


def write_sse_override(path: Path, text: str) -> Path:
    """An --override file answering with one chat completion chunk saying `text`, then [DONE]."""
    chunk = {
        "id": "chatcmpl-fork",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}}],
    }
    path.write_text(f"status: 200\nsse:\n  - 'data: {orjson.dumps(chunk).decode()}'\n  - 'data: [DONE]'\n")
    return path
