"""Attack: a secret in a `Content-Encoding: deflate` body made with a zlib window smaller than 32 KiB.

A zlib stream's first byte says its window size: 0x78 only for the largest (32 KiB). failcore took a
deflate body for zlib only when it began with 0x78 and decoded any other as raw deflate, which failed:
only the compressed bytes were scanned, and the request went out (zlib, aiohttp, every server decodes
it). A body that does not decode as its Content-Encoding says cannot be scanned at all: a receiver with
another decoder (zlib's auto-detection reads a gzip stream labelled deflate) may still read it, so
under a BLOCK-capable policy it is `dlp.unscannable`'s to decide (default: refuse).

The strict stream scan of a response decodes with the same stages: a small-window zlib response is
scanned decoded and cut on its secret (here under `unscannable: WARN`, which used to let it through
scanned only as sent).

Each through the real proxy; each asserts what reached the logging upstream (or the client) and what
the tape holds."""

from __future__ import annotations

import gzip
import zlib

import httpx
import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.helpers import DLP_BLOCK, gitleaks_token, stream_through, tape_bytes
from tests.security.upstream import EncodedStreamServer, LoggingUpstream

AWS = gitleaks_token("aws-access-token")
PAT = gitleaks_token("github-pat")
SECRET = f'{{"note": "deploy", "key": "{AWS}"}}'.encode()


def zlib_stream(data: bytes, wbits: int) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize("wbits", [15, 14, 12, 9])
def test_a_small_window_zlib_body_is_decoded_and_blocked(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path, wbits: int
) -> None:
    wire = zlib_stream(SECRET, wbits)
    assert zlib.decompress(wire) == SECRET  # what any server's zlib makes of it
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        response = client.post(
            f"{logging_upstream.url}/upload",
            content=wire,
            headers={"content-encoding": "deflate", "content-type": "application/json"},
        )
    proxy.flush()
    assert response.status_code == 403
    assert logging_upstream.received_bytes() == b"", "nothing of the request reached the upstream"
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["outcome"]) == ("BLOCK", "BLOCKED")
    assert event["rule"].startswith("dlp:") and event["rule"] != "dlp:unscannable"
    assert any(h["location"].startswith("request.body") for h in event["dlp"]["hits"])
    assert AWS.encode() not in tape_bytes(tmp_path / "tape")


def test_a_deflate_labelled_body_that_does_not_decode_is_unscannable(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """A gzip stream sent as `deflate`: failcore's deflate decoder fails on it, a receiver that lets zlib
    detect the header (wbits 47) reads the secret."""
    wire = gzip.compress(SECRET)
    assert zlib.decompress(wire, 47) == SECRET
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        refused = client.post(
            f"{logging_upstream.url}/upload", content=wire, headers={"content-encoding": "deflate"}
        )
        plain = client.post(f"{logging_upstream.url}/plain", content=b"plain-marker")
    proxy.flush()
    assert (refused.status_code, refused.headers["x-failcore-rule"]) == (403, "dlp:unscannable")
    assert plain.status_code == 200
    seen = logging_upstream.received_bytes()
    assert b"plain-marker" in seen and b"/upload" not in seen and wire not in seen
    events = {e["path"]: e for e in network_events(read_tape(tmp_path / "tape"))}
    assert (events["/upload"]["decision"], events["/upload"]["rule"]) == ("BLOCK", "dlp:unscannable")
    assert any(w["reason"] == "dlp_unscannable" for w in events["/upload"]["warnings"])
    assert events["/plain"]["decision"] == "ALLOW"
    assert AWS.encode() not in tape_bytes(tmp_path / "tape")


def test_a_small_window_zlib_response_stream_is_cut_on_its_secret(start_proxy, policy_file, tmp_path) -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 10)
    hello = compressor.compress(b'data: {"text": "hello"}\n\n') + compressor.flush(zlib.Z_SYNC_FLUSH)
    rest = compressor.compress(b'data: {"text": "token ' + PAT.encode() + b' done"}\n\n') + compressor.flush()
    server = EncodedStreamServer([hello, rest[: len(rest) // 2], rest[len(rest) // 2 :]], "deflate")
    policy = (
        "mode: enforce\ndlp:\n  stream: strict\n  unscannable: WARN\n  rule_actions: {github-pat: BLOCK}\n"
    )
    proxy = start_proxy(policy_file(policy))
    try:
        received, failure = stream_through(proxy, f"http://127.0.0.1:{server.port}/events")
    finally:
        server.close()
    assert isinstance(failure, httpx.TransportError), failure  # cut
    decoded = zlib.decompressobj().decompress(received)
    assert decoded.startswith(b'data: {"text": "hello"}'), decoded  # what came before still went out
    assert PAT.encode() not in decoded, "the client could decode the secret"
    proxy.stop()
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert event["cut"]["reason"] == "dlp" and "github-pat" in event["cut"]["detail"]
    assert PAT.encode() not in tape_bytes(tmp_path / "tape")


def test_a_coding_failcore_does_not_decode_is_scanned_as_sent(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """S3's `aws-chunked` (plain data in signed chunks, what boto3 sends for a streaming upload) is no
    coding failcore decodes: its bytes are scanned as sent, not refused as unscannable."""
    chunked = b"%x;chunk-signature=0\r\n%s\r\n0;chunk-signature=0\r\n\r\n"
    clean, leaked = (chunked % (len(body), body) for body in (b"plain-marker", SECRET))
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        sent = client.put(
            f"{logging_upstream.url}/bucket/a", content=clean, headers={"content-encoding": "aws-chunked"}
        )
        refused = client.put(
            f"{logging_upstream.url}/bucket/b", content=leaked, headers={"content-encoding": "aws-chunked"}
        )
    proxy.flush()
    assert sent.status_code == 200
    assert refused.status_code == 403 and refused.headers["x-failcore-rule"] != "dlp:unscannable"
    seen = logging_upstream.received_bytes()
    assert b"plain-marker" in seen and b"/bucket/b" not in seen
    assert AWS.encode() not in tape_bytes(tmp_path / "tape")
