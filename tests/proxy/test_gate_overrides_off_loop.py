"""PolicyGate: the `_method` field of a POST under a transfer coding (`gzip, chunked`: mitmproxy forwards
it gzip'd, the server inflates it) is read after inflating it. A body of a few KiB on the wire inflating
to megabytes was inflated on the event loop (up to 8 MiB: tens of ms in which no other connection
moved); past what a plain body is read up to there (64 KiB on the wire / 16), it is inflated and read in
a worker thread, and its verdict is the same (mitmproxy's addon harness: hooks on the main thread)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from failcore.proxy.gate import PolicyGate
from tests.addon_harness import concerns, decoded_by_thread

POLICY = """version: 1
mode: enforce
default: ALLOW
rules:
  - {id: no-delete, method: DELETE, path: /items/*, action: BLOCK}
"""


@pytest.mark.parametrize("method", ["DELETE", "PUT"])
def test_a_small_transfer_coded_form_inflating_to_megabytes_is_read_off_the_loop(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = b"note=" + b"x" * (3 << 20) + b"&_method=" + method.encode()
    wire = gzip.compress(plain)
    assert len(wire) < 4096  # (under 64 KiB / 16: not sent off the loop for its wire size)
    counts = decoded_by_thread(monkeypatch)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with concerns(PolicyGate, confdir=tmp_path, failcore_policy=str(policy)) as h:
        req = tutils.treq(
            host="api.example.com",
            port=443,
            scheme=b"https",
            method=b"POST",
            path=b"/items/7",
            headers=http.Headers(
                [
                    (b"content-type", b"application/x-www-form-urlencoded"),
                    (b"transfer-encoding", b"gzip, chunked"),
                ]
            ),
            content=b"",
        )
        req.raw_content = wire
        flow = tflow.tflow(req=req)
        h.hooks(flow, "requestheaders", "request")
        state = h.state(flow)
        if method == "DELETE":
            assert flow.response is not None and flow.response.status_code == 403
            assert state.blocked and state.decision is not None and state.decision.rule == "no-delete"
        else:
            assert flow.response is None and not state.blocked
        assert h.session.internal_errors == 0
    # (One decoding step, 256 KiB, may pass what a plain body is read up to on the loop.)
    assert counts[0] <= 512 * 1024 and counts[1] >= len(plain), counts
