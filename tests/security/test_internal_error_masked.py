"""Attack: make a failcore hook raise with a secret in the exception's message.

An exception can quote what it failed on: a ValueError from parsing a malformed header holds the header,
an API key in it included. Every other string of the tape that quotes the exchange is masked with the
DLP rules and the echoes of the exchange's credentials, but the internal_error event (its error and its
traceback) and failcore's log line ("failcore internal error in …") quoted the exception as it was, so
the key reached the tape (and a terminal log kept on disk) in clear. Fail-open still passes the request."""

from __future__ import annotations

import logging

import pytest

import failcore.proxy.gate as gate
from tests.helpers import network_events, proxied_client, read_tape
from tests.security.helpers import gitleaks_token, tape_bytes
from tests.security.upstream import LoggingUpstream

# gitleaks' own true-positive fixture for its OpenAI rule (tests/data/conformance/dlp, MIT).
RULE = "openai-api-key"
# No DLP rule knows this one: as the request's Authorization credential it is masked where echoed.
# (The DLP secret goes in a header that is not a credential's: only the DLP rules find it there.)
OPAQUE = "opaque-session-7c1e9b2f40aa4d6e"


def test_a_hook_raising_with_a_secret_in_its_message_leaves_it_on_no_tape_and_no_log(
    start_proxy,
    policy_file,
    logging_upstream: LoggingUpstream,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = gitleaks_token(RULE)

    def judge_request(policy, host, req):  # type: ignore[no-untyped-def]
        line = f"x-note: {req.headers['x-note']}; authorization: {req.headers['authorization']}"
        raise ValueError(f"malformed header line: {line.encode()!r}")

    monkeypatch.setattr(gate, "judge_request", judge_request)
    proxy = start_proxy(policy_file("version: 1\nmode: enforce\n"), upstream_ca=logging_upstream.ca_path)
    caplog.set_level(logging.WARNING, logger="failcore")
    with proxied_client(proxy) as client:
        response = client.get(
            f"{logging_upstream.url}/internal",
            headers={"x-note": secret, "authorization": f"Bearer {OPAQUE}"},
        )
    proxy.flush()
    # Fail-open: the request went out as sent, and its answer came back.
    assert response.status_code == 200
    received = logging_upstream.received_bytes()
    assert b"GET /internal" in received and secret.encode() in received and OPAQUE.encode() in received
    tape = tmp_path / "tape"
    events = read_tape(tape)
    [error] = [e for e in events if e["kind"] == "internal_error"]
    assert error["detail"]["where"] == "gate.requestheaders"
    assert error["error"].startswith("ValueError: malformed header line: b'x-note: "), error["error"]
    assert "ValueError: malformed header line" in error["detail"]["traceback"]
    hits = error["dlp"]["hits"]
    assert len(hits) == 2 and all(hit["rule"].startswith("openai") for hit in hits), hits
    assert {hit["location"] for hit in hits} == {"error", "detail.traceback"}
    assert "[redacted " in error["error"], "the echoed credential is masked by its fingerprint"
    (exchange,) = network_events(events)
    assert exchange["error"] is None or secret not in exchange["error"]
    on_disk = tape_bytes(tape)
    assert secret.encode() not in on_disk and OPAQUE.encode() not in on_disk
    # failcore's own log line says the same, masked the same way.
    [line] = [
        r.getMessage() for r in caplog.records if "internal error in gate.requestheaders" in r.getMessage()
    ]
    assert "ValueError: malformed header line" in line and "[redacted " in line, line
    assert secret not in line and OPAQUE not in line, line
