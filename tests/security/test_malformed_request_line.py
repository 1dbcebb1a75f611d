"""Attack: a request mitmproxy cannot parse leaves no trace but a log line.

A request line or a header line that does not parse is answered 400 by mitmproxy and the connection
closed before any flow exists: no hook runs, so nothing reached the tape (a client that closes in the
middle of a request head, the same). An agent probing the proxy with broken requests was silent. Now each
is a `network` event (FAIL, `detail.malformed` naming the line that failed) — without the bytes mitmproxy
quoted, which may hold a credential. Through the in-process proxy (its very first requests) and through
the real `mitmdump -s`; each asserts what reached the logging upstream and what the tape holds."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.helpers import network_events, read_tape
from tests.security.helpers import (
    DLP_BLOCK,
    gitleaks_token,
    read_head,
    run_mitmdump_any_port,
    send_raw,
    stop,
    tape_bytes,
)
from tests.security.upstream import LoggingUpstream

AWS = gitleaks_token("aws-access-token")


def cut_short(proxy_port: int, data: bytes) -> bytes:
    """`data` (a head with no end), then the client closes its side."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return read_head(s)


def probe(port: int, target: str) -> list[bytes]:
    return [
        send_raw(port, f"GARBAGE {AWS}\r\n\r\n".encode()),
        send_raw(port, f"GET {target}/h HTTP/1.1\r\nHost: x\r\nAuthorization {AWS}\r\n\r\n".encode()),
        cut_short(port, f"GET {target}/cut HTTP/1.1\r\nHost: x\r\nX-Key: {AWS}\r\n".encode()),
    ]


def check(heads: list[bytes], upstream: LoggingUpstream, tape: Path) -> None:
    assert heads[0].startswith(b"HTTP/1.1 400") and heads[1].startswith(b"HTTP/1.1 400"), heads
    assert heads[2] == b""
    assert upstream.received_bytes() == b"", "nothing of the malformed requests went out"
    events = [e for e in network_events(read_tape(tape)) if e["detail"].get("malformed")]
    kinds = sorted(e["detail"]["malformed"] for e in events)
    assert kinds == [
        "Bad HTTP request line",
        "Client closed connection before completing request headers",
        "Invalid header line",
    ], kinds
    assert all(e["outcome"] == "FAIL" and e["detail"]["client"].startswith("127.0.0.1:") for e in events)
    assert AWS.encode() not in tape_bytes(tape)


def test_unparsable_requests_are_recorded_in_process(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(DLP_BLOCK))
    heads = probe(proxy.port, plain_logging_upstream.url)
    proxy.stop()
    check(heads, plain_logging_upstream, tmp_path / "tape")


def test_unparsable_requests_are_recorded_by_mitmdump(
    plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(DLP_BLOCK)
    process, _log, port = run_mitmdump_any_port(tmp_path, "--set", f"failcore_policy={policy}")
    try:
        heads = probe(port, plain_logging_upstream.url)
    finally:
        stop(process)
    check(heads, plain_logging_upstream, tmp_path / "tape")
