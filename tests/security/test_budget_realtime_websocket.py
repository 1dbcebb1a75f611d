"""Held attack: an OpenAI Realtime-shaped WebSocket session (`/v1/realtime`) was admitted once and never
metered: every `response.create` sent after the token budget was spent still reached the upstream.

Failcore meters HTTP exchanges, not WebSocket messages, so a realtime LLM session that a token or cost
budget applies to is refused at its upgrade ("cannot meter"); another WebSocket is not an LLM session
and is still admitted."""

from __future__ import annotations

import socket

from tests.helpers import network_events, read_tape
from tests.security.budget_helpers import token_budget
from tests.security.helpers import LAST, read_head, ws_exchange
from tests.security.upstream import LoggingUpstream

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def _upgrade(proxy_port: int, upstream: LoggingUpstream, target: str) -> bytes:
    authority = f"127.0.0.1:{upstream.port}"
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=30) as s:
        s.sendall(
            f"GET http://{authority}{target} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n".encode()
        )
        return read_head(s)


def test_a_realtime_session_under_a_token_budget_is_refused(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    proxy = start_proxy(policy_file(token_budget(50)))
    answer = _upgrade(proxy.port, plain_logging_upstream, "/v1/realtime?model=gpt-4o-realtime-preview")
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert b"X-FailCore-Rule: budget:tokens" in answer
    assert b"/v1/realtime" not in plain_logging_upstream.received_bytes()

    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("BLOCK", "budget:tokens")
    assert any("cannot be metered" in w["message"] for w in event["warnings"])


def test_another_websocket_is_still_admitted(
    start_proxy, policy_file, logging_upstream: LoggingUpstream
) -> None:
    proxy = start_proxy(policy_file(token_budget(50)), upstream_ca=logging_upstream.ca_path)
    assert ws_exchange(proxy, logging_upstream, ["hello"]) == ["hello", LAST]
