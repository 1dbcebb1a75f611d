"""PolicyGate through mitmproxy's addon harness: the verdict per request and CONNECT, the refusal it
answers itself, option validation and the policy event."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from mitmproxy import exceptions
from mitmproxy.test import tflow, tutils

from failcore.proxy.gate import PolicyGate
from tests.addon_harness import concerns

POLICY = """\
version: 1
mode: enforce
default: ALLOW
rules:
  - id: no-uploads
    host: api.example.com
    path: /v1/files/**
    action: BLOCK
    reason: uploads leave the machine
  - id: no-exfil-host
    host: exfil.example
    action: BLOCK
"""


def request_flow(host: str, path: str = "/", method: str = "GET", **headers: str) -> tflow.HTTPFlow:
    req = tutils.treq(host=host, port=443, scheme=b"https", method=method.encode(), path=path.encode())
    for name, value in headers.items():
        req.headers[name] = value
    return tflow.tflow(req=req)


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def test_block_rule_is_answered_by_the_gate_itself(policy: Path, confdir: Path) -> None:
    with concerns(PolicyGate, confdir=confdir, failcore_policy=str(policy)) as h:
        blocked = request_flow("api.example.com", "/v1/files/upload", "POST")
        allowed = request_flow("api.example.com", "/v1/chat")
        h.hooks(blocked, "requestheaders", "request")
        h.hooks(allowed, "requestheaders", "request")

        assert blocked.response is not None and blocked.response.status_code == 403
        assert blocked.response.headers["X-FailCore-Decision"] == "BLOCK"
        assert blocked.response.headers["X-FailCore-Rule"] == "no-uploads"
        error = orjson.loads(blocked.response.content)["error"]
        assert error["type"] == "failcore_blocked" and error["event"] == blocked.id
        assert h.state(blocked).blocked is True
        assert h.state(blocked).decision.rule == "no-uploads"  # type: ignore[union-attr]

        assert allowed.response is None
        assert h.state(allowed).decision.decision == "ALLOW"  # type: ignore[union-attr]
        assert h.state(allowed).blocked is False
        assert h.session.internal_errors == 0


def test_host_header_cannot_buy_a_laxer_verdict(policy: Path, confdir: Path) -> None:
    with concerns(PolicyGate, confdir=confdir, failcore_policy=str(policy)) as h:
        flow = request_flow("exfil.example", "/", Host="harmless.example")
        h.hooks(flow, "requestheaders", "request")
        assert flow.response is not None and flow.response.status_code == 403
        # ... nor does a real target that is allowed become blocked by a Host header naming a blocked one
        # for free: the stricter of both verdicts applies.
        claimed = request_flow("harmless.example", "/", Host="exfil.example")
        h.hooks(claimed, "requestheaders", "request")
        assert claimed.response is not None and claimed.response.status_code == 403


def test_blocked_connect_is_refused_before_the_tunnel(policy: Path, confdir: Path) -> None:
    with concerns(PolicyGate, confdir=confdir, failcore_policy=str(policy)) as h:
        connect = tflow.tflow(req=tutils.treq(method=b"CONNECT", host="exfil.example", port=443, path=b""))
        h.hooks(connect, "http_connect")
        assert connect.response is not None and connect.response.status_code == 403
        assert h.state(connect).decision.rule == "no-exfil-host"  # type: ignore[union-attr]
        fine = tflow.tflow(req=tutils.treq(method=b"CONNECT", host="api.example.com", port=443, path=b""))
        h.hooks(fine, "http_connect")
        assert fine.response is None


def test_observe_mode_option_records_the_would_be_block_and_forwards(policy: Path, confdir: Path) -> None:
    with concerns(PolicyGate, confdir=confdir, failcore_policy=str(policy), failcore_mode="observe") as h:
        flow = request_flow("api.example.com", "/v1/files/upload", "POST")
        h.hooks(flow, "requestheaders", "request")
        assert flow.response is None
        decision = h.state(flow).decision
        assert decision is not None and decision.matched_action == "BLOCK" and decision.decision != "BLOCK"
        [loaded] = h.kinds("policy")
        assert loaded["detail"]["action"] == "policy.load" and loaded["detail"]["mode"] == "observe"


def test_policy_load_is_recorded_with_its_hash(policy: Path, confdir: Path) -> None:
    with concerns(PolicyGate, confdir=confdir, failcore_policy=str(policy)) as h:
        [loaded] = h.kinds("policy")
        detail = loaded["detail"]
        assert detail["action"] == "policy.load" and detail["ok"] is True
        assert detail["path"] == str(policy) and detail["rules"] == 2 and detail["mode"] == "enforce"
        assert detail["active_sha256"] == h.session.policy.sha256  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"failcore_mode": "panic"}, "failcore_mode must be observe or enforce"),
        ({"failcore_policy_poll_ms": -1}, "failcore_policy_poll_ms must be >= 0"),
    ],
)
def test_bad_options_are_refused_and_rolled_back(
    policy: Path, confdir: Path, options: dict[str, object], message: str
) -> None:
    with concerns(PolicyGate, confdir=confdir, failcore_policy=str(policy)) as h:
        with pytest.raises(exceptions.OptionsError, match=message):
            h.configure(**options)
        name = next(iter(options))
        assert getattr(h.tctx.options, name) != options[name]


def test_invalid_policy_file_is_an_options_error_with_its_position(tmp_path: Path, confdir: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: enforce\nrules:\n  - host: example.com\n    action: EXPLODE\n")
    with (
        pytest.raises(exceptions.OptionsError, match=rf"{bad}:4:.*EXPLODE"),
        concerns(PolicyGate, confdir=confdir, failcore_policy=str(bad)),
    ):
        pass
