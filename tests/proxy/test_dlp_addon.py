"""DlpGuard through mitmproxy's addon harness: a secret in a request body or a WebSocket message is
stopped before it leaves (enforce), only noted in observe mode; clean traffic is untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
from mitmproxy import websocket
from mitmproxy.test import tflow, tutils
from wsproto.frame_protocol import Opcode

from failcore.proxy.dlpguard import DlpGuard
from failcore.proxy.gate import PolicyGate
from tests.addon_harness import Harness, concerns
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
