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
from tests.security.helpers import DLP_BLOCK, tape_bytes
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
