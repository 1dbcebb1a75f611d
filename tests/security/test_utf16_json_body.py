"""Attack: a secret in a JSON body encoded as UTF-16 or UTF-32.

Python's `json.loads` of bytes reads UTF-16 and UTF-32 (json.detect_encoding: a BOM, or the NUL bytes
of the first four), and Starlette's `Request.json()` is `json.loads(await self.body())`: FastAPI servers
(vLLM's, LiteLLM's OpenAI-compatible ones) take such a body as the same chat request, secret and all.
failcore's budgets read it so (failcore.llm.typed.loads_or_none falls back on `json.loads`); its DLP
scanned the bytes as they are, `A\\x00K\\x00I\\x00A\\x00…`, where no rule matches: the key went out
past a BLOCK, and was recorded unmasked on the tape.

Through the real proxy: what reached the logging upstream and what the tape holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import network_events, read_tape
from tests.security.coding_helpers import recoverable
from tests.security.helpers import (
    AWS_KEY_ID,
    DLP_BLOCK,
    assert_refused,
    plain_request,
    send_raw,
    tape_bytes,
)
from tests.security.upstream import LoggingUpstream

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"deploy with {AWS_KEY_ID} please"}]}
ENCODINGS = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"]


def _post(upstream: LoggingUpstream, body: bytes) -> bytes:
    return plain_request(
        upstream, "POST", "/v1/chat/completions", headers="Content-Type: application/json\r\n", body=body
    )


def _secret_forms() -> list[bytes]:
    return [AWS_KEY_ID.encode(encoding) for encoding in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le")] + [
        AWS_KEY_ID.encode("utf-32-be")
    ]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_secret_in_a_utf16_or_utf32_json_body_is_refused(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, encoding: str
) -> None:
    body = json.dumps(CHAT).encode(encoding)
    assert json.loads(body) == CHAT, "what a Python server reads"
    proxy = start_proxy(policy_file(DLP_BLOCK))
    answer = send_raw(proxy.port, _post(plain_logging_upstream, body))
    proxy.flush()
    event = assert_refused(answer, plain_logging_upstream, tmp_path / "tape")
    assert (event["decision"], event["rule"]) == ("BLOCK", "dlp:aws-access-key-id")
    assert not any(form in tape_bytes(tmp_path / "tape") for form in _secret_forms())


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32-le"])
def test_the_tape_masks_it_in_observe_mode(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, encoding: str
) -> None:
    body = json.dumps(CHAT).encode(encoding)
    proxy = start_proxy(policy_file("version: 1\nmode: observe\n"))
    answer = send_raw(proxy.port, _post(plain_logging_upstream, body))
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 "), answer
    assert body in plain_logging_upstream.received_bytes(), "observe mode forwards it as sent"
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert any(h["rule"] == "aws-access-key-id" for h in event["dlp"]["hits"])
    for recorded in recoverable(tmp_path / "tape"):  # the tape's bytes, its bodies, their decodings
        assert not any(form in recorded for form in _secret_forms())
