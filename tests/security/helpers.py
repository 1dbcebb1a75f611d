"""What several attack tests share: the secret they smuggle, the policy that must stop it, a raw
socket reader, a look at the tape's bytes and the real mitmdump with the failcore addon."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from tests.dlp_corpus import load_samples

if TYPE_CHECKING:
    from tests.helpers import ProxyThread
    from tests.security.upstream import LoggingUpstream

REPO = Path(__file__).resolve().parents[2]
ADDON = REPO / "addons" / "failcore_addon.py"
MITMDUMP = Path(sys.executable).parent / "mitmdump"

# Assembled at run time so the repository holds no secret-shaped strings.
AWS_KEY_ID = "AKIA" + "QWERTYUIOPASDFGH"

DLP_BLOCK = """
version: 1
mode: enforce
default: ALLOW
dlp:
  severity_actions: {critical: BLOCK, high: BLOCK}
"""


# A keyword-scoped gitleaks rule (bundled): its token is one only with the keyword ("airtable") in the
# text scanned with it. Its token is gitleaks' own true-positive fixture (tests/data/conformance/dlp, MIT).
AIRTABLE_RULE = "airtable-personnal-access-token"


def gitleaks_token(rule: str) -> str:
    """gitleaks' own true-positive secret for `rule` (its fixtures, not written here)."""
    return next(s.secret for s in load_samples() if s.rule == rule and s.kind == "tp" and s.secret)


def tape_bytes(tape: Path) -> bytes:
    """Every segment as written: a secret found here is on disk in clear."""
    return b"".join(p.read_bytes() for p in tape.glob("seg-*.jsonl"))


def read_head(sock: socket.socket) -> bytes:
    """Bytes up to the end of an HTTP head (or the connection's end)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def send_raw(proxy_port: int, request: bytes) -> bytes:
    """One hand-written request to the proxy; the head of its answer."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=30) as s:
        s.sendall(request)
        return read_head(s)


def plain_request(
    upstream: LoggingUpstream, method: str, path: str, *, headers: str = "", body: bytes | None = None
) -> bytes:
    """An absolute-form HTTP/1.1 request to the plain `upstream`, written byte for byte (no client
    normalises its path first); `headers` are whole CRLF-ended lines; a body gets its Content-Length."""
    authority = f"127.0.0.1:{upstream.port}"
    length = "" if body is None else f"Content-Length: {len(body)}\r\n"
    head = f"{method} http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\n{headers}{length}"
    return f"{head}Connection: close\r\n\r\n".encode() + (body or b"")


def assert_refused(answer: bytes, upstream: LoggingUpstream, tape: Path) -> dict:
    """A 403 from the proxy, not a byte at the upstream, and one network event on the tape: returned
    for the caller's own checks of its decision and rule."""
    from tests.helpers import network_events, read_tape

    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert upstream.received_bytes() == b""
    (event,) = network_events(read_tape(tape))
    return event


def read_head_only(sock: socket.socket) -> bytes:
    """Bytes up to the end of an HTTP head and not one past it: what follows (a server's greeting sent
    through a tunnel as soon as it opens) stays in the socket for the caller."""
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            break
        data += byte
    return data


def tunnel(
    proxy_port: int, upstream: LoggingUpstream, host: str = "127.0.0.1", settle: float = 0
) -> socket.socket:
    """A CONNECT tunnel through the proxy to `upstream` (named `host`), its 200 already read (and only
    it: the tunnel's first bytes, sent with the 200, are the caller's). `settle`: seconds to wait before
    reading, so what the server sent at once is there together with the 200."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=30)
    authority = f"{host}:{upstream.port}"
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    time.sleep(settle)
    assert read_head_only(sock).startswith(b"HTTP/1.1 200")
    return sock


def read_until_closed(sock: socket.socket, want: int) -> bytes:
    data = b""
    try:
        while len(data) < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def echo_then_stop(proxy: ProxyThread, upstream: LoggingUpstream, payload: bytes) -> None:
    """A tunnel through `proxy` to `upstream` sends `payload` and reads its echo,
    and is still open when the proxy stops."""
    sock = tunnel(proxy.port, upstream)
    try:
        sock.sendall(payload)
        assert read_until_closed(sock, len(payload)) == payload
        proxy.stop()
    finally:
        sock.close()


def tcp_events(tape: Path, wait: float = 10) -> list[dict]:
    """The tape's raw TCP stream events, waiting up to `wait` seconds for the first (it is written
    when the stream ends)."""
    from tests.helpers import network_events, read_tape

    deadline = time.monotonic() + wait
    while True:
        events = [e for e in network_events(read_tape(tape)) if e["action"] == "tcp.stream"]
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_mitmdump(tmp_path: Path, port: int, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "mitmdump.log"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "PYTHONPATH"}
    cmd = [
        str(MITMDUMP),
        "-s",
        str(ADDON),
        "-p",
        str(port),
        "--set",
        f"confdir={tmp_path / 'conf'}",
        "--set",
        f"failcore_tape={tmp_path / 'tape'}",
        *args,
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    deadline = time.monotonic() + 90
    while b"failcore: recording run" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"mitmdump did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return process, log


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


def h2_post_with_trailers(proxy: ProxyThread, up: LoggingUpstream, trailers: list[tuple[str, str]]) -> int:
    """POST /trailers over HTTP/2 (through a CONNECT tunnel) with a body and `trailers`; returns the
    response status (the proxy closing without answering fails the test)."""
    return h2_post(
        proxy, up, [("te", "trailers")], b"body-marker", path="/trailers", trailers=trailers, strict=True
    )


def stream_through(proxy: ProxyThread, url: str) -> tuple[bytes, httpx.HTTPError | None]:
    """GET `url` through the proxy as a stream (its answer a 200): the body bytes that reached the client,
    as sent, and the error reading them ended in (None: the stream ended cleanly; a cut one ends in an
    httpx.TransportError)."""
    from tests.helpers import proxied_client

    got = b""
    with proxied_client(proxy) as client:
        try:
            with client.stream("GET", url) as response:
                assert response.status_code == 200
                for piece in response.iter_raw():
                    got += piece
        except httpx.HTTPError as e:
            return got, e
    return got, None


def get_through_tunnel(
    proxy: ProxyThread, up: LoggingUpstream, sni: str, path: str = "/sni", *, check_hostname: bool = True
) -> bytes:
    """CONNECT localhost:PORT of `up` (its certificate covers localhost), then a TLS ClientHello naming
    `sni` and one GET `path` through the tunnel: the head of the answer."""
    authority = f"localhost:{up.port}"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as raw:
        raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        assert read_head(raw).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context(cafile=str(proxy.ca_cert))
        context.check_hostname = check_hostname
        context.set_alpn_protocols(["http/1.1"])
        with context.wrap_socket(raw, server_hostname=sni) as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
            return read_head(tls)


LAST = "last-marker"


def ws_exchange(
    proxy: ProxyThread,
    up: LoggingUpstream,
    messages: list[str],
    headers: list[tuple[bytes, bytes]] | None = None,
) -> list[str]:
    """Open a wss:// connection through the proxy (its upgrade request with `headers`), send `messages`
    then LAST, and return every text message received until LAST comes back (the connection is
    ordered: nothing earlier is pending)."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=15)
    sock.sendall(f"CONNECT 127.0.0.1:{up.port} HTTP/1.1\r\nHost: 127.0.0.1:{up.port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    tls = ssl.create_default_context(cafile=str(proxy.ca_cert)).wrap_socket(sock, server_hostname="127.0.0.1")
    ws = WSConnection(ConnectionType.CLIENT)
    tls.sendall(ws.send(Request(host=f"127.0.0.1:{up.port}", target="/ws", extra_headers=headers or [])))
    received: list[str] = []
    accepted = False
    try:
        while True:
            data = tls.recv(65536)
            assert data, "the connection closed before the last message came back"
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    accepted = True
                    for message in [*messages, LAST]:
                        tls.sendall(ws.send(TextMessage(data=message)))
                elif isinstance(event, TextMessage):
                    received.append(event.data)
                    if event.data == LAST:
                        tls.sendall(ws.send(CloseConnection(code=1000)))
                        return received
    finally:
        assert accepted
        tls.close()


def assert_tcp_refused(answer: bytes, upstream: LoggingUpstream, tape: Path, rule: str) -> dict:
    """A raw TCP stream refused before a client byte left: the client got no answer, the upstream got
    nothing, and the tape holds one `tcp.stream` event, BLOCK by `rule`, outcome BLOCKED. The event."""
    assert answer == b"", answer
    assert upstream.received_bytes() == b"", "a refused stream's bytes reached the upstream"
    (event,) = tcp_events(tape, wait=60)
    assert (event["decision"], event["outcome"], event["rule"]) == ("BLOCK", "BLOCKED", rule), event
    return event


# A path rule with no host, its mode left to `.format(mode=…)`: the raw TCP tests' HTTP rule.
NO_ADMIN_PATH_RULE = """
version: 1
mode: {mode}
default: ALLOW
rules:
  - {{id: no-admin, path: /admin/**, action: BLOCK}}
"""


def admin_post(upstream: LoggingUpstream) -> bytes:
    """A whole HTTP/1.1 request that NO_ADMIN_PATH_RULE refuses, written to be sent through a tunnel."""
    return (
        f"POST /admin/users HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\nContent-Length: 12\r\n"
        "Connection: close\r\n\r\ndelete-all!!"
    ).encode()


def wait_until_received(upstream: LoggingUpstream, expected: bytes, seconds: float = 60) -> None:
    """Wait (up to `seconds`, generous under load) until `upstream` holds exactly `expected`: the proxy
    relayed a message, so what the client sends next is a message of its own."""
    deadline = time.monotonic() + seconds
    while upstream.received_bytes() != expected and time.monotonic() < deadline:
        time.sleep(0.05)


def through_tunnel(
    proxy: ProxyThread, upstream: LoggingUpstream, *messages: bytes, want: int, apart: float = 0.5
) -> bytes:
    """A raw stream through a CONNECT tunnel to `upstream`: each of `messages` sent on its own (`apart`
    seconds between them), then what comes back read until `want` bytes or the stream's end, and the
    proxy flushed. What the client got."""
    with tunnel(proxy.port, upstream) as sock:
        for i, message in enumerate(messages):
            if i:
                time.sleep(apart)
            sock.sendall(message)
        answer = read_until_closed(sock, want)
    proxy.flush()
    return answer


def request_and_connect(proxy_port: int, authority: str, *, close: bool = True) -> tuple[bytes, bytes]:
    """A POST (body "secret") to http://`authority`/marker, then a CONNECT to `authority`, each on a
    connection of its own and written byte for byte: the heads of the two answers."""
    close_line = "Connection: close\r\n" if close else ""
    answer = send_raw(
        proxy_port,
        f"POST http://{authority}/marker HTTP/1.1\r\nHost: {authority}\r\n"
        f"Content-Length: 6\r\n{close_line}\r\nsecret".encode(),
    )
    connect = send_raw(proxy_port, f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    return answer, connect


def assert_request_and_connect_refused(
    answer: bytes, connect: bytes, upstream: LoggingUpstream, tape: Path, rule: str
) -> None:
    """Both answers of request_and_connect a 403, not a connection to the upstream, and the tape's two
    events (the request and the CONNECT) BLOCKED by `rule`."""
    from tests.helpers import network_events, read_tape

    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert connect.startswith(b"HTTP/1.1 403"), connect
    assert upstream.received_bytes() == b""
    assert upstream.connections == []
    events = network_events(read_tape(tape))
    assert sorted((e["action"], e["decision"], e["outcome"], e["rule"]) for e in events) == [
        ("http.connect", "BLOCK", "BLOCKED", rule),
        ("http.request", "BLOCK", "BLOCKED", rule),
    ]


def send_plain(
    proxy: ProxyThread, upstream: LoggingUpstream, method: str, path: str, *, headers: str = ""
) -> bytes:
    """plain_request(`upstream`, `method`, `path`) sent to the proxy, which is then flushed: the head of
    the answer, for assert_refused or assert_passed."""
    answer = send_raw(proxy.port, plain_request(upstream, method, path, headers=headers))
    proxy.flush()
    return answer


def assert_passed(answer: bytes, upstream: LoggingUpstream, tape: Path, request_line: bytes) -> dict:
    """assert_refused's counterpart: a 200, `request_line` at the upstream exactly as written, and one
    network event on the tape: returned for the caller's own checks of its decision and rule."""
    from tests.helpers import network_events, read_tape

    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert request_line in upstream.received_bytes()
    (event,) = network_events(read_tape(tape))
    return event


def keyword_scoped_pair(
    proxy: ProxyThread,
    up: LoggingUpstream,
    tape: Path,
    alone: list[tuple[str, str]],
    keyed: list[tuple[str, str]],
    keyed_path: str,
) -> dict[str, dict]:
    """POST /v1/alone with headers `alone` (an AIRTABLE_RULE token without its keyword: no secret, so it
    passes), then `keyed_path` with headers `keyed` (the keyword too: refused by that rule's DLP BLOCK,
    not a byte of it sent). The tape's network events by path, for the caller's checks of the hits."""
    from tests.helpers import network_events, proxied_client, read_tape

    with proxied_client(proxy) as client:
        passed = client.post(f"{up.url}/v1/alone", headers=alone, content=b"{}")
        refused = client.post(f"{up.url}{keyed_path}", headers=keyed, content=b"{}")
    proxy.flush()
    assert passed.status_code == 200, "without its keyword the token is not one (gitleaks' rule)"
    assert refused.status_code == 403
    seen = up.received_bytes()
    assert b"/v1/alone" in seen and keyed_path.encode() not in seen
    events = {e["path"]: e for e in network_events(read_tape(tape))}
    event = events[keyed_path]
    verdict = (event["decision"], event["outcome"], event["rule"])
    assert verdict == ("BLOCK", "BLOCKED", f"dlp:{AIRTABLE_RULE}")
    return events


def run_mitmdump_any_port(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path, int]:
    """run_mitmdump on port 0: the kernel picks a free port as mitmdump binds (a port picked by the test
    first, free_port, can be taken by another process before mitmdump binds it). The port it listens on
    is read from its log (the last "listening at": failcore rebinds mitmproxy's server to loopback)."""
    process, log = run_mitmdump(tmp_path, 0, *args)
    found = re.findall(rb"proxy listening at \S*:(\d+)", log.read_bytes())
    if not found:
        stop(process)
        pytest.fail(f"mitmdump said no port:\n{log.read_text(errors='replace')}")
    return process, log, int(found[-1])


def h2_post(
    proxy: ProxyThread,
    up: LoggingUpstream,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    path: str = "/h2",
    trailers: list[tuple[str, str]] | None = None,
    strict: bool = False,
) -> int:
    """POST `path` over HTTP/2 (through a CONNECT tunnel) with extra `headers`, `body` and `trailers`;
    the response status, 0 when the stream was reset or the connection closed first. Not `strict`,
    the headers are sent as they are (the client does not check them); `strict`, h2 checks them and
    a connection closed without an answer fails the test."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=15)
    sock.sendall(f"CONNECT 127.0.0.1:{up.port} HTTP/1.1\r\nHost: 127.0.0.1:{up.port}\r\n\r\n".encode())
    head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 200"), head
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    context.set_alpn_protocols(["h2"])
    tls = context.wrap_socket(sock, server_hostname="127.0.0.1")
    assert tls.selected_alpn_protocol() == "h2"
    config = h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=strict, normalize_outbound_headers=strict
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    pseudo = [
        (":method", "POST"),
        (":path", path),
        (":authority", f"127.0.0.1:{up.port}"),
        (":scheme", "https"),
    ]
    conn.send_headers(stream, [*pseudo, *headers])
    conn.send_data(stream, body, end_stream=trailers is None)
    if trailers is not None:
        conn.send_headers(stream, trailers, end_stream=True)
    tls.sendall(conn.data_to_send())
    status = 0
    try:
        while True:
            data = tls.recv(65536)
            if not data:
                assert not strict, "the proxy closed the connection without answering"
                return status
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
