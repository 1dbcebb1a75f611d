"""Attack: a secret in HTTP/2 request trailers. mitmproxy reads a request's trailers with its body and
forwards them after the `request` hook; DLP used to scan the headers and body only.

An h2 client (the `h2` library mitmproxy itself uses) talks HTTP/2 to the proxy through a CONNECT
tunnel and sends the secret in a trailer field."""

from __future__ import annotations

import socket
import ssl

import h2.config
import h2.connection
import h2.events

from tests.helpers import ProxyThread, network_events, read_tape
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK
from tests.security.upstream import LoggingUpstream


def h2_post_with_trailers(proxy: ProxyThread, up: LoggingUpstream, trailers: list[tuple[str, str]]) -> int:
    """POST /trailers over HTTP/2 with a body and `trailers`; returns the response status."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=15)
    sock.sendall(f"CONNECT 127.0.0.1:{up.port} HTTP/1.1\r\nHost: 127.0.0.1:{up.port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    context.set_alpn_protocols(["h2"])
    tls = context.wrap_socket(sock, server_hostname="127.0.0.1")
    assert tls.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(
        stream,
        [
            (":method", "POST"),
            (":path", "/trailers"),
            (":authority", f"127.0.0.1:{up.port}"),
            (":scheme", "https"),
            ("te", "trailers"),
        ],
    )
    conn.send_data(stream, b"body-marker")
    conn.send_headers(stream, trailers, end_stream=True)
    tls.sendall(conn.data_to_send())
    status = 0
    try:
        while True:
            data = tls.recv(65536)
            assert data, "the proxy closed the connection without answering"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                    status = int(dict(event.headers)[b":status"])
                elif (
                    isinstance(event, h2.events.StreamEnded | h2.events.StreamReset)
                    and event.stream_id == stream
                ):
                    return status
            tls.sendall(conn.data_to_send())
    finally:
        tls.close()


def test_a_secret_in_http2_trailers_is_blocked(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    # Lazy: the client's TLS (and its h2) is settled before the HTTP/1.1-only upstream is dialled.
    proxy = start_proxy(
        policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path, sets=["connection_strategy=lazy"]
    )
    status = h2_post_with_trailers(proxy, logging_upstream, [("x-checksum", AWS_KEY_ID)])
    proxy.flush()
    assert status == 403
    assert logging_upstream.received_bytes() == b"", "neither the body nor the trailer reached the upstream"
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"], event["outcome"]) == (
        "BLOCK",
        "dlp:aws-access-key-id",
        "BLOCKED",
    )
    tape = b"".join(p.read_bytes() for p in (tmp_path / "tape").glob("seg-*.jsonl"))
    assert AWS_KEY_ID.encode() not in tape
