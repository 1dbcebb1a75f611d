"""Recorder through mitmproxy's addon harness: what one finished exchange becomes on the tape (each
event checked against the shipped JSON Schema), credentials redacted, a failed exchange named as such."""

from __future__ import annotations

from pathlib import Path

from mitmproxy import http
from mitmproxy.test import tflow, tutils

from failcore.proxy.gate import PolicyGate
from failcore.proxy.recorder import Recorder
from failcore.proxy.streamtap import StreamTap
from tests.addon_harness import Harness, concerns
from tests.helpers import VALIDATOR

# Shaped like no known secret provider key: what hides it is the credential-header handling (the
# header redaction and, behind it, the evidence scan both replace it; the test checks the outcome).
SECRET_TOKEN = "opaque-session-credential-of-the-agent"


def exchange(h: Harness, *, error: str | None = None) -> http.HTTPFlow:
    req = tutils.treq(
        host="api.example.com",
        port=443,
        scheme=b"https",
        method=b"POST",
        path=b"/v1/items?x=1",
        headers=http.Headers(
            [(b"content-type", b"application/json"), (b"authorization", b"Bearer " + SECRET_TOKEN.encode())]
        ),
        content=b'{"name": "widget"}',
    )
    flow = tflow.tflow(req=req)
    h.hooks(flow, "requestheaders", "request")
    if error is not None:
        flow.error = tflow.terr(error)
        h.hooks(flow, "error")
        return flow
    headers = http.Headers([(b"content-type", b"application/json"), (b"content-length", b"9")])
    flow.response = tutils.tresp(status_code=201, headers=headers, content=b'{"id": 7}')
    h.hooks(flow, "responseheaders", "response")
    return flow


def network(h: Harness) -> dict:  # type: ignore[type-arg]
    [event] = h.kinds("network")
    # The tape writer adds the chain fields when it writes the line.
    chained = {**event, "seq": 1, "prev": "0" * 64, "h": "0" * 64}
    errors = sorted(VALIDATOR.iter_errors(chained), key=str)
    assert not errors, errors[0].message
    return event


def test_a_finished_exchange_becomes_one_network_event(confdir: Path) -> None:
    with concerns(PolicyGate, StreamTap, Recorder, confdir=confdir) as h:
        flow = exchange(h)
        event = network(h)
        assert event["flow"] == flow.id and event["run"] == h.session.run_id
        assert event["method"] == "POST" and event["path"] == "/v1/items?x=1" and event["status"] == 201
        assert event["target"] == {"host": "api.example.com", "port": 443, "scheme": "https"}
        assert event["request"]["body"]["text"] == '{"name": "widget"}'
        assert event["response"]["body"]["text"] == '{"id": 7}'
        assert event["decision"] == "ALLOW" and event["outcome"] == "ok"
        assert flow.id not in h.session.flows  # the flow's state was let go
        assert h.session.internal_errors == 0


def test_credentials_never_reach_the_event_in_clear(confdir: Path) -> None:
    with concerns(PolicyGate, StreamTap, Recorder, confdir=confdir) as h:
        exchange(h)
        event = network(h)
        assert SECRET_TOKEN not in str(event)
        [auth] = [value for name, value in event["request"]["headers"] if name.lower() == "authorization"]
        assert auth != "Bearer " + SECRET_TOKEN


def test_a_failed_exchange_is_recorded_as_a_failure(confdir: Path) -> None:
    with concerns(PolicyGate, StreamTap, Recorder, confdir=confdir) as h:
        exchange(h, error="Connection refused")
        event = network(h)
        assert event["outcome"] == "FAIL" and event["status"] is None
        assert "Connection refused" in event["error"]
