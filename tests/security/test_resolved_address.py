"""Attack: a name no rule mentions that resolves to an inward address (SSRF by DNS; issue 9, "decide").

With `network.block_private_resolved: true`, a target that resolves to a non-global address (here
`localhost` -> 127.0.0.1, standing in for a name pointing at 169.254.169.254) is refused before
anything is sent, and a DNS answer that changes between the decision and the connection (rebinding,
simulated by making failcore's own lookup answer "public") is caught on the socket actually opened."""

from __future__ import annotations

from pathlib import Path

import pytest

from failcore.policy import PolicyError, parse_policy
from tests.helpers import network_events, read_tape
from tests.security.helpers import send_raw
from tests.security.upstream import LoggingUpstream

POLICY = "version: 1\nmode: enforce\ndefault: ALLOW\nnetwork:\n  block_private_resolved: true\n"


def get(authority: str) -> bytes:
    return f"GET http://{authority}/inward HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()


def test_name_resolving_inward_is_blocked(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(POLICY))
    authority = f"localhost:{plain_logging_upstream.port}"
    answer = send_raw(proxy.port, get(authority))
    tunnel = send_raw(proxy.port, f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403") and tunnel.startswith(b"HTTP/1.1 403")
    assert plain_logging_upstream.received_bytes() == b""
    events = network_events(read_tape(tmp_path / "tape"))
    assert sorted((e["action"], e["decision"], e["rule"]) for e in events) == [
        ("http.connect", "BLOCK", "network.block_private_resolved"),
        ("http.request", "BLOCK", "network.block_private_resolved"),
    ]
    assert all("resolves to 127.0.0.1" in e["reason"] for e in events)


def test_off_by_default(start_proxy, policy_file, plain_logging_upstream: LoggingUpstream) -> None:
    """The control: without the option the same request reaches its upstream."""
    proxy = start_proxy(policy_file("version: 1\nmode: enforce\n"))
    assert send_raw(proxy.port, get(f"localhost:{plain_logging_upstream.port}")).startswith(b"HTTP/1.1 200")
    assert b"GET /inward" in plain_logging_upstream.received_bytes()


def test_rebinding_is_caught_on_the_socket(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, monkeypatch
) -> None:
    import failcore.proxy.resolved as resolved

    async def answers_public(host: str, port: int) -> None:
        return None

    monkeypatch.setattr(resolved, "inward_address", answers_public)
    proxy = start_proxy(policy_file(POLICY))
    answer = send_raw(proxy.port, get(f"localhost:{plain_logging_upstream.port}"))
    proxy.flush()
    assert not answer.startswith(b"HTTP/1.1 200"), answer
    assert plain_logging_upstream.received_bytes() == b""
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert event["outcome"] == "FAIL"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("network: 3\n", "network: expected a mapping"),
        ("network:\n  block_private: true\n", 'unknown key "block_private" in the network section'),
        ("network:\n  block_private_resolved: yes\n", "block_private_resolved: expected true or false"),
    ],
)
def test_the_field_is_validated(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as error:
        parse_policy(text)
    assert message in str(error.value)
