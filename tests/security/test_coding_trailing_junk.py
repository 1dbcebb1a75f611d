"""Attack: a br body whose stream ends whole and is followed by junk.

1. Under `dlp.unscannable: WARN`:
A brotli decoder raises on bytes after the stream's end and drops everything that call decoded:
failcore decodes such a body (`br`, one call) to nothing, finds nothing, and under
`dlp.unscannable: WARN` forwards it with a warning. A streaming receiver (curl, a browser, Go's
andybalholm/brotli Reader) has the whole stream decoded before it meets the junk, secret and all. (The
same with a zlib stream was fixed by the codings branch: its error's output is salvaged; zstd keeps
its frames' output.)

2. On the tape: a body that decodes to nothing and whose bytes are UTF-8 text is recorded as sent
(failcore.evidence.body.body_evidence: "plain text, not in its coding at all"). A brotli stream of
uncompressed meta-blocks is such text (each block's 3-byte header is printable or a control byte, its
data the text itself), and with junk after it decodes to nothing in one call: recorded as sent, the
secret split by the second block's header (the evidence scan finds nothing to mask), and any streaming
brotli decoder of the recorded body joins it again. (Built by hand from RFC 7932 9.2: WBITS 16, then
`ISLAST=0, MNIBBLES=4, MLEN-1, ISUNCOMPRESSED=1` meta-blocks, then an empty last one.)

Through the real proxy: what reached the logging upstream, what the tape holds.
Open: the fix lies in failcore/evidence/body.py (_BrotliStage.feed), owned by branch tecodings."""

from __future__ import annotations

from pathlib import Path

import brotli

from tests.helpers import network_events, read_tape
from tests.security.coding_helpers import recoverable
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK, plain_request, send_raw
from tests.security.upstream import LoggingUpstream


def _uncompressed_blocks(first: bytes, second: bytes) -> bytes:
    """A brotli stream of two uncompressed meta-blocks (RFC 7932 9.2), the last meta-block empty."""
    head = (0 | (len(first) - 1) << 4 | 1 << 20).to_bytes(3, "little")  # WBITS=16, ISLAST=0, 4 nibbles
    head2 = ((len(second) - 1) << 3 | 1 << 19).to_bytes(3, "little")  # ISLAST=0, 4 nibbles
    return head + first + head2 + second + b"\x03"  # ISLAST=1, ISLASTEMPTY=1


SECRET_KEY = AWS_KEY_ID.encode()
# Lengths chosen so that every header byte is a printable or control byte, no NUL (UTF-8 text).
TEXT_STREAM = _uncompressed_blocks(
    b'{"note": "' + b"x" * 501 + b'", "key": "' + SECRET_KEY[:8],
    SECRET_KEY[8:] + b'", "pad": "' + b"y" * 300 + b'"}',
)
SMALL = f'{{"note": "deploy", "key": "{AWS_KEY_ID}", "pad": "'.encode() + b"lorem ipsum dolor " * 100 + b'"}'
WARN_UNSCANNABLE = DLP_BLOCK + "  unscannable: WARN\n"


def test_the_secret_before_the_junk_is_refused(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    wire = brotli.compress(SMALL) + b"\x00junk that is no brotli"
    streamed = brotli.Decompressor()
    assert AWS_KEY_ID.encode() in streamed.process(wire[:-23]), "a streaming receiver's reading"
    headers = "Content-Type: application/json\r\nContent-Encoding: br\r\n"
    proxy = start_proxy(policy_file(WARN_UNSCANNABLE))
    answer = send_raw(
        proxy.port, plain_request(plain_logging_upstream, "POST", "/upload", headers=headers, body=wire)
    )
    proxy.flush()
    assert plain_logging_upstream.received_bytes() == b"", "nothing of the request reached the upstream"
    assert answer.startswith(b"HTTP/1.1 403"), answer
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("BLOCK", "dlp:aws-access-key-id")
    assert not any(AWS_KEY_ID.encode() in data for data in recoverable(tmp_path / "tape"))


def test_a_response_of_text_brotli_with_junk_leaves_no_secret_on_the_tape(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    wire = TEXT_STREAM + b"junk after the end"
    assert SECRET_KEY not in wire and wire.decode("utf-8") and b"\x00" not in wire  # text, secret split
    assert SECRET_KEY in brotli.decompress(TEXT_STREAM), "what a brotli decoder makes of it"
    headers = [(b"content-type", b"application/json"), (b"content-encoding", b"br")]
    plain_logging_upstream.respond_with = (200, headers, wire)
    proxy = start_proxy(policy_file("version: 1\nmode: observe\n"))
    answer = send_raw(proxy.port, plain_request(plain_logging_upstream, "GET", "/download"))
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert not any(SECRET_KEY in data for data in recoverable(tmp_path / "tape")), "recoverable from the tape"
