"""Attack: a byte that is not UTF-8 in a request's path or Host header.

mitmproxy decodes these with surrogateescape; the DLP scan encoded them as strict UTF-8 and raised,
so the blocking scan failed open and the request, a secret in its body, was forwarded; for a path, the
exchange's event could not even be written (only internal errors were). Each through the real proxy:
nothing of the secret reaches the logging upstream, and the tape holds the refused exchange."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import network_events, read_tape
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK, send_raw, tape_bytes
from tests.security.upstream import LoggingUpstream

BODY = f'{{"k": "{AWS_KEY_ID}"}}'.encode()


def request(target: bytes, host: bytes) -> bytes:
    return (
        b"POST "
        + target
        + b" HTTP/1.1\r\nHost: "
        + host
        + b"\r\n"
        + f"Content-Length: {len(BODY)}\r\nConnection: close\r\n\r\n".encode()
        + BODY
    )


@pytest.mark.parametrize("where", ["path", "host header"])
def test_a_non_utf8_byte_does_not_make_the_blocking_scan_fail_open(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, where: str
) -> None:
    up = plain_logging_upstream
    authority = up.url.split("://", 1)[1].encode()
    if where == "path":
        raw = request(b"/v1/caf\xe9", authority)
    else:
        raw = request(up.url.encode() + b"/v1/host", b"caf\xe9")
    proxy = start_proxy(policy_file(DLP_BLOCK))
    head = send_raw(proxy.port, raw)
    proxy.flush()
    assert head.startswith(b"HTTP/1.1 403"), head
    assert AWS_KEY_ID.encode() not in up.received_bytes()
    tape = read_tape(tmp_path / "tape")
    assert not [e for e in tape if e["kind"] == "internal_error"], "no check failed"
    (event,) = network_events(tape)
    assert (event["decision"], event["outcome"]) == ("BLOCK", "BLOCKED")
    assert "aws-access-key-id" in (event["rule"] or "")
    if where == "path":
        assert event["path"] == "/v1/caf\\xe9", "the byte recorded as it was sent"
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")
