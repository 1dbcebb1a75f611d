"""The pure part of failcore.proxy.malformed: which of mitmproxy's log lines is a malformed request.
(The lines as mitmproxy 12.3 writes them: `<client address>: <ValueError of http1.read>`.)"""

from __future__ import annotations

import pytest

from failcore.proxy.malformed import malformed_kind


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("127.0.0.1:5000: Bad HTTP request line: b'GARBAGE'", "Bad HTTP request line"),
        ("[::1]:5000: Invalid header line: b'Authorization x'", "Invalid header line"),
        ("127.0.0.1:5000: Unknown HTTP version: b'HTTP/9'", "Unknown HTTP version"),
        ("127.0.0.1:5000: Invalid headers", "Invalid headers"),
        (
            "Client closed connection before completing request headers: b'GET /'",
            "Client closed connection before completing request headers",
        ),
        # The client's quoted bytes name another kind: the first one is mitmproxy's.
        ("127.0.0.1:5000: Invalid header line: b'X: Bad HTTP request line: y'", "Invalid header line"),
        # Other lines, also ones quoting a peer's bytes that name a kind.
        ("client connect", None),
        ("server connect example.com:443 (1.2.3.4:443)", None),
        ("Unexpected data from server: b'x: Bad HTTP request line: y'", None),
        ("127.0.0.1:5000: Bad HTTP request lines are fine", None),
    ],
)
def test_malformed_kind(line: str, kind: str | None) -> None:
    assert malformed_kind(line) == kind
