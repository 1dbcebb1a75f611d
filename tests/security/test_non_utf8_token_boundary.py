"""Attack: one byte that is not UTF-8 right before a token, in the path or a header value.

On the wire the byte (0xff) is a token boundary, so the GitHub-token rule matches what follows. The tape
records the byte as the text `\\xff`, whose last `f` glues onto `ghp_…`: read only in that form, the
rule's start boundary fails. The blocking scan read the path (and a Cookie, for a secret foreign to it)
only as recorded and forwarded the token (under `fail_open: false` too); the evidence scan read both
the path and the header only as recorded and wrote the token to the tape in clear. Each through the
real proxy: the token never reaches the logging upstream, and the tape holds the BLOCK, the hit, and
never the token."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import network_events, read_tape
from tests.security.helpers import DLP_BLOCK, send_raw, tape_bytes
from tests.security.upstream import LoggingUpstream

# Assembled at run time so the repository holds no secret-shaped strings.
TOKEN = "ghp_" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7c"


def _request(target: bytes, host: bytes, extra: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"Connection: close\r\n\r\n"


def _only_event(tmp_path: Path) -> dict[str, object]:
    tape = read_tape(tmp_path / "tape")
    assert not [e for e in tape if e["kind"] == "internal_error"], "no check failed"
    (event,) = network_events(tape)
    return event


@pytest.mark.parametrize("fail_open", [True, False])
def test_a_token_after_a_non_utf8_byte_in_the_path_is_blocked_and_masked(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, fail_open: bool
) -> None:
    up = plain_logging_upstream
    authority = up.url.split("://", 1)[1].encode()
    proxy = start_proxy(policy_file(DLP_BLOCK + ("" if fail_open else "fail_open: false\n")))
    head = send_raw(proxy.port, _request(b"/v1/x\xff" + TOKEN.encode(), authority))
    proxy.flush()
    assert head.startswith(b"HTTP/1.1 403"), head
    assert b"github-pat" in head
    assert TOKEN.encode() not in up.received_bytes()
    assert TOKEN[4:].encode() not in up.received_bytes()
    event = _only_event(tmp_path)
    assert (event["decision"], event["outcome"], event["rule"]) == ("BLOCK", "BLOCKED", "dlp:github-pat")
    hits = event["dlp"]["hits"]  # type: ignore[index]
    assert [(h["rule"], h["action"], h["location"]) for h in hits] == [("github-pat", "BLOCK", "request.url")]
    assert str(event["path"]).startswith("/v1/x\\xff"), "the byte is recorded as it was sent"
    assert TOKEN[4:20].encode() not in tape_bytes(tmp_path / "tape")


@pytest.mark.parametrize("header", ["X-T", "Cookie"])
def test_a_token_after_a_non_utf8_byte_in_a_header_is_blocked_and_masked(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, header: str
) -> None:
    up = plain_logging_upstream
    authority = up.url.split("://", 1)[1].encode()
    proxy = start_proxy(policy_file(DLP_BLOCK))
    value = (b"a=1; b=x" if header == "Cookie" else b"") + b"\xff" + TOKEN.encode()
    head = send_raw(proxy.port, _request(b"/v1/h", authority, header.encode() + b": " + value + b"\r\n"))
    proxy.flush()
    assert head.startswith(b"HTTP/1.1 403"), head
    assert b"github-pat" in head
    assert TOKEN[4:].encode() not in up.received_bytes()
    event = _only_event(tmp_path)
    assert (event["decision"], event["outcome"], event["rule"]) == ("BLOCK", "BLOCKED", "dlp:github-pat")
    if header == "X-T":  # (a Cookie is recorded as a fingerprint, never scanned for the tape)
        found = [(h["rule"], h["action"], h["location"]) for h in event["dlp"]["hits"]]  # type: ignore[index]
        assert ("github-pat", "BLOCK", "request.header:x-t") in found
    (recorded,) = [v for n, v in event["request"]["headers"] if n == header]  # type: ignore[index]
    assert recorded.startswith("[redacted ")
    assert TOKEN[4:20].encode() not in tape_bytes(tmp_path / "tape")
