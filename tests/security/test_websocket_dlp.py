"""Attack: a secret in a WebSocket message. Messages used to pass unscanned (the BLOCK rule never saw
them) and were recorded in clear on the tape, in both directions.

Through the real proxy with a wsproto client; the logging upstream keeps every message it received
(unmasked) and can greet the client with a message of its own."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import read_tape
from tests.security.helpers import AWS_KEY_ID, LAST, tape_bytes, ws_exchange
from tests.security.upstream import LoggingUpstream

DLP_BLOCK = """
version: 1
mode: enforce
default: ALLOW
dlp:
  stream: strict
  severity_actions: {critical: BLOCK, high: BLOCK}
"""


def ws_events(tape: Path) -> list[dict]:
    return [e for e in read_tape(tape) if e["kind"] == "websocket"]


def test_a_secret_sent_over_a_websocket_is_dropped_and_masked(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    received = ws_exchange(proxy, logging_upstream, ["hello-marker", f"the key is {AWS_KEY_ID}"])
    proxy.flush()
    assert logging_upstream.ws_messages == ["hello-marker", LAST], "the message with the key never left"
    assert received == ["hello-marker", LAST]
    sent = [e for e in ws_events(tmp_path / "tape") if e["detail"]["direction"] == "client->server"]
    assert [(e["decision"], e["outcome"]) for e in sent] == [
        ("ALLOW", "ok"),
        ("BLOCK", "BLOCKED"),
        ("ALLOW", "ok"),
    ]
    assert sent[1]["rule"] == "dlp:aws-access-key-id"
    assert [h["rule"] for h in sent[1]["dlp"]["hits"]] == ["aws-access-key-id"]
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")


def test_a_secret_a_server_sends_over_a_websocket_is_masked_on_the_tape(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    logging_upstream.ws_greeting = [f"your key: {AWS_KEY_ID}"]
    proxy = start_proxy(policy_file("version: 1\nmode: observe\n"), upstream_ca=logging_upstream.ca_path)
    received = ws_exchange(proxy, logging_upstream, [f"echo {AWS_KEY_ID}"])
    proxy.flush()
    # Observe mode: nothing is dropped, in either direction, but the tape holds neither copy in clear.
    assert received == [f"your key: {AWS_KEY_ID}", f"echo {AWS_KEY_ID}", LAST]
    events = ws_events(tmp_path / "tape")
    with_hits = [
        (e["detail"]["direction"], [h["rule"] for h in e["dlp"]["hits"]]) for e in events if e.get("dlp")
    ]
    assert sorted(with_hits) == [
        ("client->server", ["aws-access-key-id"]),
        ("server->client", ["aws-access-key-id"]),
        ("server->client", ["aws-access-key-id"]),
    ]
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")


def test_a_secret_a_server_sends_is_dropped_in_strict_mode(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    logging_upstream.ws_greeting = [f"your key: {AWS_KEY_ID}", "greeting-marker"]
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    received = ws_exchange(proxy, logging_upstream, [])
    proxy.flush()
    assert received == ["greeting-marker", LAST]
    inbound = [e for e in ws_events(tmp_path / "tape") if e["detail"]["direction"] == "server->client"]
    assert [e["outcome"] for e in inbound] == ["BLOCKED", "ok", "ok"]
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")
