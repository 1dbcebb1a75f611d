"""Attack: a secret hidden from DLP in a *transfer* coding (`Transfer-Encoding: gzip, chunked`).

mitmproxy accepts `gzip, chunked`, `deflate, chunked` and `compress, chunked` in a request (and
`gzip` & co. in a response), undoes only the chunked framing and forwards the compressed bytes with
the header as it is; the receiver inflates them. failcore undid only Content-Encoding: the key
below was scanned (and recorded) as gzip bytes, ALLOWed, and could be gunzipped back off the tape.
Now the transfer codings other than `chunked` are undone with the content codings, for the BLOCK
decision and for the tape (`compress` too: tests/security/test_compress_coding.py); one that does not
decode is `dlp.unscannable`.

Each through the real proxy, asserting what reached a logging upstream and what the tape holds.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import zlib
from pathlib import Path

import pytest

from tests.helpers import network_events, read_tape
from tests.security.coding_helpers import recoverable_from_tape
from tests.security.helpers import (
    AWS_KEY_ID,
    DLP_BLOCK,
    h2_post,
    plain_request,
    read_head,
    read_until_closed,
    send_raw,
)
from tests.security.transfer_helpers import chunked
from tests.security.upstream import LoggingUpstream

SECRET = f'{{"note": "aws_access_key_id = {AWS_KEY_ID}"}}'.encode()


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data)


ENCODED = {"gzip, chunked": gzip.compress, "gzip,chunked": gzip.compress, "deflate, chunked": _deflate}


def _post(upstream: LoggingUpstream, transfer_encoding: str, body: bytes) -> bytes:
    head = plain_request(
        upstream,
        "POST",
        "/te",
        headers=f"Content-Type: application/json\r\nTransfer-Encoding: {transfer_encoding}\r\n",
    )
    return head + chunked(body)


@pytest.mark.parametrize("transfer_encoding", sorted(ENCODED))
def test_a_secret_under_a_transfer_coding_is_decoded_and_blocked(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, transfer_encoding: str
) -> None:
    proxy = start_proxy(policy_file(DLP_BLOCK))
    answer = send_raw(
        proxy.port, _post(plain_logging_upstream, transfer_encoding, ENCODED[transfer_encoding](SECRET))
    )
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"x-failcore-rule: dlp:aws-access-key-id" in answer.lower()
    assert plain_logging_upstream.received_bytes() == b"", "nothing of the request reached the upstream"
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"], event["outcome"]) == (
        "BLOCK",
        "dlp:aws-access-key-id",
        "BLOCKED",
    )
    assert [h["rule"] for h in event["dlp"]["hits"]] == ["aws-access-key-id"]
    body = event["request"]["body"]
    assert body["decoded_size"] == len(SECRET) and body["sha256_of"] == "decoded"
    assert body["text"].startswith('{"note": "aws_access_key_id = ') and body["dlp_masked"] == 1
    assert not recoverable_from_tape(tmp_path / "tape", AWS_KEY_ID.encode())


def test_a_transfer_coding_failcore_cannot_undo_is_unscannable(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """`compress` (LZW) whose bytes are no LZW (its fourth code is past the table): it does not decode,
    so it is not scanned whole; under a BLOCK rule it is refused (the receiver's decoder may read what
    failcore did not). (mitmproxy does not look at the bytes.)"""
    proxy = start_proxy(policy_file(DLP_BLOCK))
    answer = send_raw(
        proxy.port, _post(plain_logging_upstream, "compress, chunked", b"\x1f\x9d\x90" + b"x" * 40)
    )
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"x-failcore-rule: dlp:unscannable" in answer.lower()
    assert plain_logging_upstream.received_bytes() == b""
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("BLOCK", "dlp:unscannable")
    assert any(w["reason"] == "dlp_unscannable" for w in event["warnings"])


@pytest.mark.parametrize("transfer_encoding", ["chunked, gzip", "x-foo, chunked", "gzip"])
def test_transfer_codings_mitmproxy_refuses_never_reach_the_upstream(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, transfer_encoding: str
) -> None:
    """What mitmproxy itself refuses (chunked not last, an unknown coding, a request framed by `gzip`
    alone): nothing reaches the upstream, whatever failcore would read."""
    proxy = start_proxy(policy_file(DLP_BLOCK))
    answer = send_raw(proxy.port, _post(plain_logging_upstream, transfer_encoding, gzip.compress(SECRET)))
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert plain_logging_upstream.received_bytes() == b""


class _GzipTransferUpstream:
    """A plain-HTTP upstream answering every request with `Transfer-Encoding: gzip` (a response
    framed by the connection's close, its body gzip'd as a transfer coding)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.sock.accept()
            with conn:
                read_head(conn)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip\r\n"
                    b"Connection: close\r\n\r\n" + gzip.compress(self.body)
                )


def test_a_response_under_a_transfer_coding_is_recorded_decoded_and_masked(
    start_proxy, policy_file, tmp_path: Path
) -> None:
    upstream = _GzipTransferUpstream(SECRET)
    try:
        proxy = start_proxy(policy_file(DLP_BLOCK))
        authority = f"127.0.0.1:{upstream.port}"
        request = (
            f"GET http://{authority}/download HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as s:
            s.sendall(request.encode())
            answer = read_until_closed(s, 1 << 20)
        proxy.flush()
    finally:
        upstream.sock.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert gzip.decompress(answer.partition(b"\r\n\r\n")[2]) == SECRET  # forwarded as the client asked
    [event] = network_events(read_tape(tmp_path / "tape"))
    body = event["response"]["body"]
    assert body["decoded_size"] == len(SECRET) and body["sha256_of"] == "decoded"
    assert body["text"].startswith('{"note": "aws_access_key_id = ') and body["dlp_masked"] == 1
    assert "aws-access-key-id" in [h["rule"] for h in event["dlp"]["hits"]]
    assert not recoverable_from_tape(tmp_path / "tape", AWS_KEY_ID.encode())


@pytest.mark.parametrize("validate", ["true", "false"])
def test_a_transfer_coding_over_http2_never_leaves_unscanned(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path, validate: str
) -> None:
    """HTTP/2 has no Transfer-Encoding (RFC 9113 8.2.2): mitmproxy's h2 refuses it, unless its
    `validate_inbound_headers` is off; then the request reaches failcore with the header, and it is
    decoded by it like an HTTP/1.1 one (and BLOCKed)."""
    # Lazy: the client's TLS (and its h2) is settled before the HTTP/1.1-only upstream is dialled.
    sets = ["connection_strategy=lazy", f"validate_inbound_headers={validate}"]
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path, sets=sets)
    wire = gzip.compress(SECRET)
    headers = [("content-type", "application/json"), ("transfer-encoding", "gzip")]
    status = h2_post(proxy, logging_upstream, headers, wire)
    proxy.flush()
    assert status != 200
    assert wire not in logging_upstream.received_bytes()
    if validate == "false":
        assert status == 403
        [event] = network_events(read_tape(tmp_path / "tape"))
        assert (event["decision"], event["rule"]) == ("BLOCK", "dlp:aws-access-key-id")
    assert not recoverable_from_tape(tmp_path / "tape", AWS_KEY_ID.encode())
