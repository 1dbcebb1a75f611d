"""Attack: a secret in a compressed body that does not decode whole, its codings all known.

A truncated gzip body (or deflate, br, zstd), a multi-member gzip body whose last member is cut, a gzip
member followed by bytes that are no gzip, a gzip or zlib stream whose checksum is wrong: the decoder
stops with an error, and failcore recorded such a body on the tape as its wire bytes (base64). Those
bytes are the secret, compressed: a streaming inflate (a receiver's, or anyone's reading the tape)
gives it back in clear, unmasked, though the DLP scan had found it in the decoded prefix. A wrong
checksum was worse: zlib drops what a whole call decoded when it raises, so nothing of the body was
scanned decoded and, under `dlp.unscannable: WARN`, the secret went out unseen.

Now what decodes before the error is decoded (a zlib error's output is salvaged byte by byte), scanned
and recorded masked, marked `wire_dropped`; the wire bytes are never on the tape. Requests and
responses; each through the real proxy, each asserting what reached the logging upstream and what any
decoder recovers from the tape."""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Callable
from pathlib import Path

import brotli
import pytest

from failcore.compat import zstd
from tests.helpers import network_events, read_tape
from tests.security.coding_helpers import recoverable
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK, plain_request, send_raw
from tests.security.upstream import LoggingUpstream

# The secret near the start, then enough text that the part cut off is far from it (and that a zstd
# frame has several blocks).
# (Words before it, so every coding Huffman-codes its literals: a secret stored as a literal run would
# be masked in the wire bytes too.)
_rng = random.Random(7)
NOTE = "".join(_rng.choice("abcdefghijklmnopqrstuvwxyz     ") for _ in range(4000))
SECRET = (
    f'{{"note": "{NOTE}", "key": "{AWS_KEY_ID}", "pad": "'.encode() + b"lorem ipsum dolor " * 16000 + b'"}'
)
# Small enough that zlib decodes all of it in one call (which a wrong checksum made it drop whole).
SMALL = f'{{"note": "deploy", "key": "{AWS_KEY_ID}", "pad": "'.encode() + b"lorem ipsum dolor " * 100 + b'"}'
OBSERVE = "version: 1\nmode: observe\n"
WARN_UNSCANNABLE = DLP_BLOCK + "  unscannable: WARN\n"


def _bad_check(wire: bytes, at: int) -> bytes:
    """`wire` with one byte of its trailer (gzip's CRC-32, zlib's Adler-32) flipped."""
    return wire[:at] + bytes([wire[at] ^ 0x01]) + wire[at + 1 :]


ATTACKS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "gzip-truncated": ("gzip", lambda b: gzip.compress(b)[:-12]),
    "gzip-last-member-truncated": ("gzip", lambda b: gzip.compress(b"{}") + gzip.compress(b)[:-12]),
    "gzip-trailing-garbage": ("gzip", lambda b: gzip.compress(b) + b"\x00garbage that is no gzip"),
    "gzip-wrong-crc": ("gzip", lambda b: _bad_check(gzip.compress(b), -8)),
    "deflate-truncated": ("deflate", lambda b: zlib.compress(b)[:-6]),
    "deflate-wrong-adler": ("deflate", lambda b: _bad_check(zlib.compress(b), -1)),
    "br-truncated": ("br", lambda b: brotli.compress(b)[:-4]),
    "zstd-truncated": ("zstd", lambda b: zstd.compress(b)[:-4]),
}
# Those whose checksum is wrong: zlib dropped everything they decoded to.
CHECKSUM = ["gzip-wrong-crc", "deflate-wrong-adler"]


def _post(upstream: LoggingUpstream, coding: str, wire: bytes) -> bytes:
    headers = f"Content-Type: application/json\r\nContent-Encoding: {coding}\r\n"
    return plain_request(upstream, "POST", "/upload", headers=headers, body=wire)


def _assert_tape_keeps_no_secret(tape: Path, where: str) -> dict:
    assert not any(AWS_KEY_ID.encode() in data for data in recoverable(tape)), "recoverable from the tape"
    [event] = network_events(read_tape(tape))
    body = event[where]["body"]
    assert body["wire_dropped"] and body["truncated"] and "decode_error" in body
    assert body["dlp_masked"] >= 1 and f'{NOTE}", "key": "' in body["text"], "recorded decoded"
    assert any(h["location"].startswith(f"{where}.body") for h in event["dlp"]["hits"])
    return event


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_request_body_that_does_not_decode_whole_is_recorded_decoded_and_masked(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, attack: str
) -> None:
    coding, make = ATTACKS[attack]
    wire = make(SECRET)
    proxy = start_proxy(policy_file(OBSERVE))
    answer = send_raw(proxy.port, _post(plain_logging_upstream, coding, wire))
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert wire in plain_logging_upstream.received_bytes(), "observe mode forwards it as sent"
    _assert_tape_keeps_no_secret(tmp_path / "tape", "request")


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_response_body_that_does_not_decode_whole_is_recorded_decoded_and_masked(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, attack: str
) -> None:
    coding, make = ATTACKS[attack]
    plain_logging_upstream.respond_with = (
        200,
        [(b"content-type", b"application/json"), (b"content-encoding", coding.encode())],
        make(SECRET),
    )
    proxy = start_proxy(policy_file(OBSERVE))
    answer = send_raw(proxy.port, plain_request(plain_logging_upstream, "GET", "/download"))
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    _assert_tape_keeps_no_secret(tmp_path / "tape", "response")


@pytest.mark.parametrize("attack", CHECKSUM)
def test_a_request_with_a_wrong_checksum_is_judged_on_what_it_decodes_to(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, attack: str
) -> None:
    """Under `dlp.unscannable: WARN` the secret is still found (and refused): before, nothing of the
    body was scanned decoded, the request went out with a warning only."""
    coding, make = ATTACKS[attack]
    proxy = start_proxy(policy_file(WARN_UNSCANNABLE))
    answer = send_raw(proxy.port, _post(plain_logging_upstream, coding, make(SMALL)))
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert plain_logging_upstream.received_bytes() == b"", "nothing of the request reached the upstream"
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("BLOCK", "dlp:aws-access-key-id")
    assert not any(AWS_KEY_ID.encode() in data for data in recoverable(tmp_path / "tape"))
