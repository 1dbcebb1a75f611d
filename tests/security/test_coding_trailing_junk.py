"""Attack: a br body whose stream ends whole and is followed by junk, under `dlp.unscannable: WARN`.

A brotli decoder raises on bytes after the stream's end and drops everything that call decoded:
failcore decodes such a body (`br`, one call) to nothing, finds nothing, and under
`dlp.unscannable: WARN` forwards it with a warning. A streaming receiver (curl, a browser, Go's
andybalholm/brotli Reader) has the whole stream decoded before it meets the junk, secret and all. (The
same with a zlib stream was fixed by the codings branch: its error's output is salvaged; zstd keeps
its frames' output.) Through the real proxy: what reached the logging upstream, what the tape holds.

Open: the fix lies in failcore/evidence/body.py (_BrotliStage.feed), owned by branch tecodings."""

from __future__ import annotations

from pathlib import Path

import brotli
import pytest

from tests.helpers import network_events, read_tape
from tests.security.coding_helpers import recoverable
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK, plain_request, send_raw
from tests.security.upstream import LoggingUpstream

SMALL = f'{{"note": "deploy", "key": "{AWS_KEY_ID}", "pad": "'.encode() + b"lorem ipsum dolor " * 100 + b'"}'
WARN_UNSCANNABLE = DLP_BLOCK + "  unscannable: WARN\n"


@pytest.mark.xfail(strict=True, reason="open: failcore/evidence/body.py _BrotliStage (branch tecodings)")
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
