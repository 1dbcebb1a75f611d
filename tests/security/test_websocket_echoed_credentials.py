"""Attack: a credential of a WebSocket's upgrade request, sent again (or echoed back) in a message.

An exchange's credentials (an Authorization token, a cookie's value) are masked wherever the exchange
repeats them (failcore.evidence.echoes), but WebSocket message events were built without them: a
client or server repeating the upgrade's Bearer token or session cookie in a message had it written
to the tape in clear. Through the real proxy with a wsproto client; the logging upstream echoes every
message back. Masking is evidence only: the messages themselves reach both sides unchanged."""

from __future__ import annotations

import secrets

import pytest

from tests.helpers import read_tape
from tests.security.helpers import LAST, tape_bytes, ws_exchange
from tests.security.upstream import LoggingUpstream

DLP = "version: 1\nmode: observe\n"
# The DLP pass in the evidence worker (the default), in the writer's thread, and no DLP pass at all.
CASES = {
    "dlp-worker": (DLP, "1"),
    "dlp-in-process": (DLP, "0"),
    "no-dlp": ("version: 1\nmode: observe\ndlp:\n  enabled: false\n", "1"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_upgrade_credentials_repeated_in_messages_are_masked(
    start_proxy,
    policy_file,
    logging_upstream: LoggingUpstream,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    policy, worker = CASES[case]
    monkeypatch.setenv("FAILCORE_EVIDENCE_WORKER", worker)
    # Random, and of no provider's format: only the echo masking can find them.
    token = "tok-" + secrets.token_hex(16)
    session = "sess-" + secrets.token_hex(16)
    headers = [(b"authorization", f"Bearer {token}".encode()), (b"cookie", f"sid={session}".encode())]
    messages = [f"my token is {token}", f'{{"session": "{session}"}}']
    proxy = start_proxy(policy_file(policy), upstream_ca=logging_upstream.ca_path)
    received = ws_exchange(proxy, logging_upstream, messages, headers)
    proxy.flush()
    assert logging_upstream.ws_messages == [*messages, LAST], "the messages went through as sent"
    assert received == [*messages, LAST], "and came back as the upstream echoed them"
    upgrade = bytes(logging_upstream.connections[0].data)
    assert f"Bearer {token}".encode() in upgrade, "the upgrade carried the credential"
    tape = tape_bytes(tmp_path / "tape")
    assert token.encode() not in tape and session.encode() not in tape
    events = [e for e in read_tape(tmp_path / "tape") if e["kind"] == "websocket"]
    texts = [(e["detail"]["direction"], e["detail"]["body"]["text"]) for e in events]
    assert len(texts) == 6, texts  # three messages each way
    for direction in ("client->server", "server->client"):
        token_text, session_text = [t for d, t in texts if d == direction][:2]
        assert token_text.startswith("my token is [redacted hmac-sha256:"), token_text
        assert session_text.startswith('{"session": "[redacted hmac-sha256:'), session_text
