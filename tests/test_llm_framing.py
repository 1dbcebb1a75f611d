"""The same LLM answer is metered identically whatever its framing, through the real proxy.

Every provider API the stand-in speaks (OpenAI Chat Completions and Responses, Anthropic Messages,
Gemini generateContent / streamGenerateContent with and without alt=sse, Ollama's NDJSON API), JSON and
streamed, is asked for the same usage under every framing: a Content-Length or chunked without one,
times identity / gzip / deflate / br / zstd. The expected tokens are the ones the stand-in was told to
report, normalised by hand as documented in failcore/llm/usage.py.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from failcore.compat import zstd
from failcore.demo.framing import ENCODINGS, FRAMINGS
from tests.helpers import network_events, read_tape

USAGE = {"input": 1200, "output": 345, "cached": 200, "cache_write": 100, "reasoning": 40}
ASK = [{"role": "user", "content": "framing"}]

# (case, path, body, expected (input, output), streams)
CASES: list[tuple[str, str, dict[str, Any], tuple[int, int], bool]] = [
    ("chat", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": ASK}, (1200, 345), False),
    (
        "chat-sse",
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": ASK, "stream": True, "stream_options": {"include_usage": True}},
        (1200, 345),
        True,
    ),
    ("responses", "/v1/responses", {"model": "gpt-4o", "input": "framing"}, (1200, 345), False),
    (
        "responses-sse",
        "/v1/responses",
        {"model": "gpt-4o", "input": "framing", "stream": True},
        (1200, 345),
        True,
    ),
    # Anthropic reports the uncached input only: cache reads and writes are added back.
    (
        "messages",
        "/v1/messages",
        {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": ASK},
        (1500, 345),
        False,
    ),
    (
        "messages-sse",
        "/v1/messages",
        {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": ASK, "stream": True},
        (1500, 345),
        True,
    ),
    (
        "gemini",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        {"contents": [{"role": "user", "parts": [{"text": "framing"}]}]},
        (1200, 345),
        False,
    ),
    (
        "gemini-sse",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "framing"}]}]},
        (1200, 345),
        True,
    ),
    (
        "gemini-array",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        {"contents": [{"role": "user", "parts": [{"text": "framing"}]}]},
        (1200, 345),
        True,
    ),
    ("ollama", "/api/chat", {"model": "llama3", "messages": ASK, "stream": False}, (1200, 345), False),
    ("ollama-ndjson", "/api/chat", {"model": "llama3", "messages": ASK}, (1200, 345), True),
    ("ollama-generate-ndjson", "/api/generate", {"model": "llama3", "prompt": "framing"}, (1200, 345), True),
]


def _event_header(event: dict[str, Any], name: str) -> str | None:
    return next((v for k, v in event["request"]["headers"] if k.lower() == name), None)


@pytest.fixture(scope="module")
def framed_events(tmp_path_factory, confdir, upstream) -> dict[tuple[str, str, str], dict[str, Any]]:  # type: ignore[no-untyped-def]
    from failcore.runner import ProxySettings
    from tests.helpers import ProxyThread

    tape = tmp_path_factory.mktemp("framing") / "tape"
    proxy = ProxyThread(
        ProxySettings(
            listen_port=0,
            tape=str(tape),
            confdir=confdir,
            sets=[f"ssl_verify_upstream_trusted_ca={upstream.ca_path}"],
        )
    ).start()
    try:
        trust = ssl.create_default_context(cafile=str(proxy.ca_cert))
        with httpx.Client(proxy=proxy.url, verify=trust, timeout=30) as client:
            for case, path, body, _, _ in CASES:
                for framing in FRAMINGS:
                    for encoding in ENCODINGS:
                        response = client.post(
                            upstream.url + path,
                            content=orjson.dumps(body),
                            headers={
                                "content-type": "application/json",
                                "x-standin-usage": orjson.dumps(USAGE).decode(),
                                "x-standin-framing": framing,
                                "x-standin-encoding": encoding,
                                "x-case": f"{case}|{framing}|{encoding}",
                            },
                        )
                        assert response.status_code == 200, (case, framing, encoding, response.text)
                        content = response.content
                        # httpx decodes zstd only when the zstandard package is installed (not declared
                        # by failcore; langsmith, in the integrations extra, pulls it in)
                        if encoding == "zstd" and content.startswith(b"\x28\xb5\x2f\xfd"):
                            content = zstd.decompress(content)
                        assert b"framing" in content, (case, framing, encoding)
    finally:
        proxy.stop()
    events = {}
    for event in network_events(read_tape(Path(tape))):
        case, framing, encoding = (_event_header(event, "x-case") or "||").split("|")
        events[(case, framing, encoding)] = event
    return events


@pytest.mark.parametrize(("case", "path", "body", "expected", "streams"), CASES, ids=[c[0] for c in CASES])
def test_every_framing_is_metered_identically(framed_events, case, path, body, expected, streams) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, Any] = {}
    for framing in FRAMINGS:
        for encoding in ENCODINGS:
            event = framed_events[(case, framing, encoding)]
            llm = event["llm"]
            where = f"{case} {framing} {encoding}"
            assert llm["usage"]["known"] is True, where
            assert (llm["usage"]["input_tokens"], llm["usage"]["output_tokens"]) == expected, where
            assert llm["stream"] is streams, where
            assert llm["response_model"] is not None and llm["finish_reason"] is not None, where
            assert event["warnings"] == [] or case.startswith("ollama"), (where, event["warnings"])
            comparable = {k: v for k, v in llm.items() if k != "contract_drift"}
            seen.setdefault("first", comparable)
            assert comparable == seen["first"], where
    if not case.startswith("ollama"):
        assert seen["first"]["cost"]["usd"] is not None
        assert seen["first"]["cost"]["source"].startswith("genai-prices ")


def test_json_answer_cut_mid_body_is_still_an_llm_call(start_proxy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.llm_replay import RedirectToReplay, ReplayUpstream, load_exchanges

    exchange = next(
        e
        for e in load_exchanges()
        if e["host"] == "api.openai.com:443" and e["response_headers"].get("content-encoding") == "gzip"
    )
    with ReplayUpstream([{**exchange, "cut_after_parts": 2}]) as replay:
        proxy = start_proxy()
        proxy.call(lambda: proxy.proxy.master.addons.add(RedirectToReplay(replay.port)))
        with httpx.Client(proxy=proxy.url, timeout=30) as client, pytest.raises(httpx.HTTPError):
            client.post(
                f"http://{exchange['host']}{exchange['path']}",
                content=exchange["request_body"].encode(),
                headers={"content-type": "application/json", "x-replay-id": "0"},
            )
        proxy.stop()
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert event["llm"]["provider"] == "openai" and event["llm"]["stream"] is False
    assert event["llm"]["usage"]["known"] is False and event["llm"]["cost"]["usd"] is None
