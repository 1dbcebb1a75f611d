"""Attack: a header that repeats the request's own credential, placed between the halves of a secret
split over headers.

The evidence scan reads the header block after masking echoed credentials: the repeating header
becomes a fingerprint and drops out of the block, so the halves either side of it meet and the tape
records the secret as a BLOCK hit. The blocking scan read the header as sent, whose value broke the
secret: the request was forwarded. Through the real proxy: nothing of it reaches the logging upstream,
and the tape holds the refusal."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.helpers import DLP_BLOCK, send_raw, tape_bytes
from tests.security.upstream import LoggingUpstream

BODY64 = "MIIEowIBAAKCAQEAuZkq3Q7bD1xK9mVtFhYQnRz8PpL0aWcE2sT4uJ6yHkGiOvXrM"  # 65 base64 characters


def test_a_header_echoing_the_credential_cannot_split_a_private_key_past_the_blocking_scan(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    headers = [
        ("Authorization", "Bearer .qwertyuiop"),
        ("X-K1", "-----BEGIN RSA PRIVATE KEY-----"),
        ("X-Mid", ".qwertyuiop"),
        ("X-K2", BODY64),
    ]
    proxy = start_proxy(policy_file(DLP_BLOCK))
    with proxied_client(proxy) as client:
        response = client.post(f"{plain_logging_upstream.url}/v1/pem", headers=headers, content=b"pem-marker")
    proxy.flush()
    assert response.status_code == 403
    assert response.headers["x-failcore-rule"] == "dlp:private-key"
    assert plain_logging_upstream.received_bytes() == b""
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["outcome"]) == ("BLOCK", "BLOCKED")
    assert BODY64.encode() not in tape_bytes(tmp_path / "tape")


def test_a_private_key_spread_over_header_names_is_masked_in_the_names(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """The key's body written as a header's name: the request is refused, and the tape must not keep
    the name in clear (a hit across lines masked only the values it covered, and named the header by
    its name in the hit's location)."""
    host = plain_logging_upstream.url.split("://", 1)[1]
    request = (
        f"POST {plain_logging_upstream.url}/v1/names HTTP/1.1\r\nHost: {host}\r\n".encode()
        + b"X-K1: -----BEGIN RSA PRIVATE KEY-----\r\n"
        + BODY64.encode()
        + b": x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    proxy = start_proxy(policy_file(DLP_BLOCK))
    head = send_raw(proxy.port, request)
    proxy.flush()
    assert head.startswith(b"HTTP/1.1 403"), head
    assert plain_logging_upstream.received_bytes() == b""
    tape = tape_bytes(tmp_path / "tape")
    assert BODY64.encode() not in tape and BODY64.lower().encode() not in tape
