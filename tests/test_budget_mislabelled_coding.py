"""A JSON answer labelled with a coding it is not in (`Content-Encoding: gzip` on a plain JSON body: a
gateway that inflated it and kept the header) is read as it was sent, and a budget charges the text
it carries, as for the same answer labelled right, not its whole body's size. Through the real proxy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import network_events, read_tape
from tests.security.budget_helpers import completion_without_usage, token_budget
from tests.security.transfer_helpers import RawUpstream, through_proxy

# Text a Python server escapes in its JSON (`ensure_ascii`): 6 bytes of body per character.
TEXT = "Le café coûte 3 € à Zürich. 東京の天気は晴れです。" * 40
FRAMING_TOKENS = 4  # what an estimate adds per message (failcore.budgetcharge's documented framing)


@pytest.mark.parametrize("label", ["gzip", "br", "x-unknown"])
def test_a_plain_json_answer_labelled_with_a_coding_is_charged_its_text(
    label: str, start_proxy, policy_file, tmp_path: Path
) -> None:
    body = completion_without_usage(TEXT)
    assert len(body) > 3 * len(TEXT)
    answer = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: {label}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    request = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with RawUpstream(answer) as upstream:
        proxy = start_proxy(policy_file(token_budget(1 << 30, metric="output_tokens")))
        post = (
            f"POST http://{upstream.authority}/v1/chat/completions HTTP/1.1\r\nHost: {upstream.authority}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(request)}\r\nConnection: close\r\n\r\n"
        ).encode() + request
        assert through_proxy(proxy.port, post)[:12] == b"HTTP/1.1 200"
        proxy.flush()
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert event["llm"]["response_model"] == "gpt-4o-2024-08-06"
    assert event["llm"]["budget_estimate"]["output_tokens"] == len(TEXT) + FRAMING_TOKENS
