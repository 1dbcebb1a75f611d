"""DlpGuard through mitmproxy's addon harness: a secret in a request body or a WebSocket message is
stopped before it leaves (enforce), only noted in observe mode; clean traffic is untouched."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from mitmproxy import http, websocket
from mitmproxy.test import tflow, tutils
from wsproto.frame_protocol import Opcode

from failcore.proxy.dlpguard import DlpGuard
from failcore.proxy.gate import PolicyGate
from tests.addon_harness import Harness, concerns, decoded_by_thread
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK


@pytest.fixture
def policy(tmp_path: Path):  # type: ignore[no-untyped-def]
    def write(mode: str) -> Path:
        path = tmp_path / f"{mode}.yaml"
        path.write_text(DLP_BLOCK.replace("mode: enforce", f"mode: {mode}"))
        return path

    return write


def post(h: Harness, body: bytes) -> tflow.HTTPFlow:
    req = tutils.treq(
        host="api.example.com", port=443, scheme=b"https", method=b"POST", path=b"/v1/upload", content=body
    )
    flow = tflow.tflow(req=req)
    h.hooks(flow, "requestheaders", "request")
    return flow


def test_secret_in_a_request_body_is_refused_before_it_leaves(policy, confdir: Path) -> None:  # type: ignore[no-untyped-def]
    with concerns(PolicyGate, DlpGuard, confdir=confdir, failcore_policy=str(policy("enforce"))) as h:
        leaking = post(h, b'{"note": "key ' + AWS_KEY_ID.encode() + b'"}')
        clean = post(h, b'{"note": "nothing to see"}')
        assert leaking.response is not None and leaking.response.status_code == 403
        assert AWS_KEY_ID.encode() not in leaking.response.content  # the refusal does not echo it
        decision = h.state(leaking).decision
        assert decision is not None and decision.rule == "dlp:aws-access-key-id"
        assert h.state(leaking).blocked is True
        assert clean.response is None and h.state(clean).blocked is False
        assert h.session.internal_errors == 0


def test_observe_mode_forwards_the_secret(policy, confdir: Path) -> None:  # type: ignore[no-untyped-def]
    with concerns(PolicyGate, DlpGuard, confdir=confdir, failcore_policy=str(policy("observe"))) as h:
        flow = post(h, b"key " + AWS_KEY_ID.encode())
        assert flow.response is None and h.state(flow).blocked is False


def test_secret_in_a_websocket_message_is_dropped(policy, confdir: Path) -> None:  # type: ignore[no-untyped-def]
    with concerns(PolicyGate, DlpGuard, confdir=confdir, failcore_policy=str(policy("enforce"))) as h:
        flow = tflow.twebsocketflow(messages=False)
        assert flow.websocket is not None
        flow.websocket.messages.append(websocket.WebSocketMessage(Opcode.TEXT, True, b"hello"))
        h.hooks(flow, "websocket_message")
        assert not flow.websocket.messages[-1].dropped
        flow.websocket.messages.append(
            websocket.WebSocketMessage(Opcode.TEXT, True, b"key " + AWS_KEY_ID.encode())
        )
        h.hooks(flow, "websocket_message")
        assert flow.websocket.messages[-1].dropped


def test_a_small_compressed_body_inflating_to_megabytes_is_decoded_and_scanned_off_the_loop(
    policy, confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A request of a few KiB gzip'd that inflates to 3 MiB with a key at its end: it was decoded on the
    event loop up to 8 MiB (30-50 ms in which no other connection moved) before the scan went to a
    worker thread; now no more than a plain body is scanned there, and the key is still refused."""
    plain = b'{"note": "' + b" " * (3 << 20) + b"key " + AWS_KEY_ID.encode() + b'"}'
    wire = gzip.compress(plain)
    assert len(wire) < 4096  # (under 64 KiB / 16: not sent off the loop for its wire size)
    counts = decoded_by_thread(monkeypatch)  # [on the event loop (the main thread here), elsewhere]
    with concerns(PolicyGate, DlpGuard, confdir=confdir, failcore_policy=str(policy("enforce"))) as h:
        req = tutils.treq(
            host="api.example.com",
            port=443,
            scheme=b"https",
            method=b"POST",
            path=b"/v1/upload",
            headers=http.Headers([(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]),
            content=b"",
        )
        req.raw_content = wire
        flow = tflow.tflow(req=req)
        h.hooks(flow, "requestheaders", "request")
        assert flow.response is not None and flow.response.status_code == 403
        decision = h.state(flow).decision
        assert decision is not None and decision.rule == "dlp:aws-access-key-id"
        assert h.session.internal_errors == 0
    # (One decoding step, 256 KiB, may pass the 64 KiB a plain body is scanned on the loop up to.)
    assert counts[0] <= 512 * 1024 and counts[1] >= len(plain), counts
