"""Strict stream DLP against an encoded response: a secret the upstream sends gzip'd (in a later gzip
member, split across chunks, with no Content-Length) is cut before the client can decode it.

Strict mode (`dlp.stream: strict`, enforce) promises that a BLOCK hit cuts a response stream before
the secret's bytes leave. mitmproxy hands the stream callable the body as it is on the wire, so a
scan of those bytes alone never sees a compressed secret: the client would decode it."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.helpers import stream_through, tape_bytes
from tests.security.upstream import EncodedStreamServer

GITHUB_PAT = b"ghp_" + b"Z9y8X7w6V5u4" * 3
POLICY = "mode: enforce\ndlp:\n  stream: strict\n  rule_actions: {github-pat: BLOCK}\n"


def decode_what_arrived(received: bytes) -> bytes:
    """Everything a client can decode from the gzip bytes it got (members one after another, the
    last one possibly cut short)."""
    out = b""
    data = received
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += inflater.decompress(data)
        if not inflater.eof:
            break
        data = inflater.unused_data
    return out


def split(data: bytes, at: int) -> list[bytes]:
    return [data[:at], data[at:]]


def member_pieces() -> list[bytes]:
    """A harmless first gzip member, then a second member whose compressed bytes are split in the
    middle: the secret is whole only once both halves arrived."""
    first = gzip.compress(b'data: {"text": "hello"}\n\n')
    second = gzip.compress(b'data: {"text": "token ' + GITHUB_PAT + b' done"}\n\n')
    return [first, *split(second, len(second) // 2)]


@pytest.fixture
def gzip_stream() -> Iterator[EncodedStreamServer]:
    server = EncodedStreamServer(member_pieces())
    yield server
    server.close()


def test_a_gzipped_secret_in_a_later_member_cuts_the_strict_stream(
    start_proxy, policy_file, gzip_stream: EncodedStreamServer, tmp_path
) -> None:
    proxy = start_proxy(policy_file(POLICY))
    received, failure = stream_through(proxy, f"http://127.0.0.1:{gzip_stream.port}/events")
    assert isinstance(failure, httpx.TransportError), failure  # cut
    decoded = decode_what_arrived(received)
    assert GITHUB_PAT not in decoded, "the client could decode the secret"
    assert decoded.startswith(b'data: {"text": "hello"}'), decoded  # what came before still went out
    proxy.stop()
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert event["cut"]["reason"] == "dlp" and "github-pat" in event["cut"]["detail"]
    assert GITHUB_PAT not in tape_bytes(tmp_path / "tape")


def test_a_secret_in_the_gzip_header_cuts_the_strict_stream(start_proxy, policy_file, tmp_path) -> None:
    """The secret is in the gzip header's file name (FNAME): decoders skip it, but a client reading the
    body as sent (curl without --compressed) shows it."""
    hello = gzip.compress(b'data: {"text": "hello"}\n\n')
    named = gzip.compress(b'data: {"text": "bye"}\n\n')
    named = named[:3] + bytes([named[3] | 0x08]) + named[4:10] + b"token-" + GITHUB_PAT + b"\x00" + named[10:]
    server = EncodedStreamServer([hello, named])
    proxy = start_proxy(policy_file(POLICY))
    try:
        received, failure = stream_through(proxy, f"http://127.0.0.1:{server.port}/events")
    finally:
        server.close()
    assert isinstance(failure, httpx.TransportError), failure  # cut
    assert GITHUB_PAT not in received
    assert received.startswith(hello)
    proxy.stop()
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert event["cut"]["reason"] == "dlp" and "github-pat" in event["cut"]["detail"]
    assert GITHUB_PAT not in tape_bytes(tmp_path / "tape")


def test_a_stream_that_stops_decoding_under_unscannable_warn_is_marked_on_the_tape(
    start_proxy, policy_file, tmp_path
) -> None:
    """`dlp.unscannable: WARN`: a gzip stream that stops decoding (a corrupt second member) is let
    through, scanned as sent from there on. The agent's bytes were not scanned as the client decodes
    them, so the exchange's event must say so: a log line alone is not evidence."""
    first = gzip.compress(b'data: {"text": "hello"}\n\n')
    second = gzip.compress(b'data: {"text": "more"}\n\n')
    corrupt = second[:12] + bytes(b ^ 0x55 for b in second[12:24]) + second[24:]
    server = EncodedStreamServer([first, corrupt])
    proxy = start_proxy(policy_file(POLICY + "  unscannable: WARN\n"))
    try:
        with (
            proxied_client(proxy) as client,
            client.stream("GET", f"http://127.0.0.1:{server.port}/events") as response,
        ):
            received = b"".join(response.iter_raw())
    finally:
        server.close()
    assert received == first + corrupt, "WARN lets the stream through whole"
    proxy.stop()
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert "cut" not in event or not event["cut"]
    [warning] = [w for w in event.get("warnings", []) if w["reason"] == "dlp_unscannable"]
    assert "does not decode" in warning["message"] and "wire bytes" in warning["message"]
