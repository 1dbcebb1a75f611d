"""Attack: raw (non-HTTP) TCP through an allowed CONNECT (issue 9, item 11 and the raw-TCP part of 2).

mitmproxy relayed such bytes with no event at all. Now each stream is a `tcp.stream` event, a
`scheme: tcp` BLOCK rule closes it before a byte is relayed, and DLP sees the bytes as they pass.
The logging upstream echoes raw TCP back."""

from __future__ import annotations

from pathlib import Path

from tests.security.helpers import echo_then_stop, read_until_closed, tcp_events, tunnel
from tests.security.upstream import LoggingUpstream

# Assembled at run time so the repository itself holds no secret-shaped strings.
GITHUB_PAT = "ghp_" + "Z9y8X7w6V5u4" * 3
PAYLOAD = b"\x00\x01\x02raw-hello\xff"


def test_raw_tcp_yields_an_event(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file("version: 1\nmode: enforce\ndefault: ALLOW\n"))
    with tunnel(proxy.port, plain_logging_upstream) as sock:
        sock.sendall(PAYLOAD)
        echoed = read_until_closed(sock, len(PAYLOAD))
        sock.sendall(b"second")
        echoed += read_until_closed(sock, 6)
    assert echoed == PAYLOAD + b"second"
    assert plain_logging_upstream.received_bytes() == PAYLOAD + b"second"
    proxy.flush()
    (event,) = tcp_events(tmp_path / "tape")
    assert event["target"] == {"host": "127.0.0.1", "port": plain_logging_upstream.port, "scheme": "tcp"}
    assert (event["decision"], event["outcome"]) == ("ALLOW", "ok")
    assert (event["bytes_out"], event["bytes_in"]) == (len(PAYLOAD) + 6, len(PAYLOAD) + 6)
    assert event["detail"]["messages_out"] == 2 and event["detail"]["tls"] is False
    assert event["latency_ms"] >= event["ttfb_ms"] > 0


def test_tcp_block_rule_closes_the_stream(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    policy = "version: 1\nmode: enforce\nrules:\n  - {id: no-raw, scheme: tcp, action: BLOCK}\n"
    proxy = start_proxy(policy_file(policy))
    with tunnel(proxy.port, plain_logging_upstream) as sock:
        sock.sendall(PAYLOAD)
        echoed = read_until_closed(sock, len(PAYLOAD))
    assert echoed == b""
    assert plain_logging_upstream.received_bytes() == b""
    proxy.flush()
    (event,) = tcp_events(tmp_path / "tape")
    assert (event["decision"], event["outcome"], event["rule"]) == ("BLOCK", "BLOCKED", "no-raw")
    assert event["detail"]["blocked_by"] == "policy"


def test_dlp_block_stops_a_secret_in_raw_tcp(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    policy = "version: 1\nmode: enforce\ndlp:\n  rule_actions: {github-pat: BLOCK}\n"
    proxy = start_proxy(policy_file(policy))
    with tunnel(proxy.port, plain_logging_upstream) as sock:
        sock.sendall(b"harmless first message")
        first = read_until_closed(sock, 22)
        sock.sendall(f"token={GITHUB_PAT}\n".encode())
        second = read_until_closed(sock, 10)
    assert first == b"harmless first message" and second == b""
    seen = plain_logging_upstream.received_bytes()
    assert seen == b"harmless first message"
    proxy.flush()
    (event,) = tcp_events(tmp_path / "tape")
    assert (event["decision"], event["outcome"]) == ("BLOCK", "BLOCKED")
    assert event["detail"]["blocked_by"] == "dlp"
    (hit,) = event["dlp"]["hits"]
    assert (hit["rule"], hit["action"], hit["location"]) == ("github-pat", "BLOCK", "request.body@28")
    tape = b"".join(p.read_bytes() for p in (tmp_path / "tape").glob("seg-*.jsonl"))
    assert GITHUB_PAT.encode() not in tape


def test_a_raw_tcp_stream_open_when_the_proxy_stops_is_on_the_tape(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """mitmproxy does not end a stream it is relaying when the proxy stops: it was recorded only at its
    end, so a stream still open then left no event."""
    proxy = start_proxy(policy_file("version: 1\nmode: enforce\ndefault: ALLOW\n"))
    echo_then_stop(proxy, plain_logging_upstream, PAYLOAD)
    (event,) = tcp_events(tmp_path / "tape", wait=0)
    assert event["target"]["port"] == plain_logging_upstream.port
    assert (event["bytes_out"], event["bytes_in"]) == (len(PAYLOAD), len(PAYLOAD))
    assert event["detail"]["open_when_the_proxy_stopped"] is True
