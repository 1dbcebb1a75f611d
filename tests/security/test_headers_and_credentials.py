"""Attacks on headers and credentials:

- a secret spelled as a header *name* (`X-AKIA…: 1`) was neither blocked nor masked on the tape;
- credential headers (Cookie, Authorization, X-Api-Key) were never scanned: an AWS key in a Cookie left;
- credentials an upstream echoes back in its response (a Bearer token, a cookie, a `redact_headers`
  token, Basic credentials) were recorded in clear;
- common credential headers outside the short default list (X-Auth-Token, X-Goog-Api-Key) were recorded
  in clear.

Each through the real proxy; each asserts what reached the logging upstream and what the tape holds."""

from __future__ import annotations

import base64
import secrets

import orjson

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK, tape_bytes
from tests.security.upstream import LoggingUpstream

GITHUB_PAT = "ghp_" + "Z9y8X7w6V5u4" * 3


def test_a_secret_as_a_header_name_is_blocked_and_not_recorded(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        response = client.get(f"{logging_upstream.url}/named", headers={f"X-{AWS_KEY_ID}": "1"})
    proxy.flush()
    assert response.status_code == 403
    assert logging_upstream.received_bytes() == b""
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("BLOCK", "dlp:aws-access-key-id")
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")
    assert AWS_KEY_ID.lower().encode() not in tape_bytes(tmp_path / "tape")


def test_a_secret_as_a_header_name_is_masked_on_the_tape_in_observe_mode(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    proxy = start_proxy(policy_file("version: 1\nmode: observe\n"), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        response = client.get(f"{logging_upstream.url}/named", headers={f"X-{AWS_KEY_ID}": "1"})
    proxy.flush()
    assert response.status_code == 200
    assert f"X-{AWS_KEY_ID}".encode() in logging_upstream.received_bytes(), "observe mode forwards it"
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert "request.header-name" in [h["location"] for h in event["dlp"]["hits"]]
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")


def test_a_foreign_secret_in_a_cookie_is_blocked_while_an_api_key_in_its_own_header_passes(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        smuggled = client.get(
            f"{logging_upstream.url}/cookie", headers={"Cookie": f"session=abc123; aws={AWS_KEY_ID}"}
        )
        own = client.get(f"{logging_upstream.url}/own", headers={"Authorization": f"Bearer {GITHUB_PAT}"})
        appended = client.get(
            f"{logging_upstream.url}/appended", headers={"Authorization": f"Bearer abc123 {AWS_KEY_ID}"}
        )
    proxy.flush()
    assert (smuggled.status_code, own.status_code, appended.status_code) == (403, 200, 403)
    seen = logging_upstream.received_bytes()
    assert AWS_KEY_ID.encode() not in seen and GITHUB_PAT.encode() in seen
    events = {e["path"]: e for e in network_events(read_tape(tmp_path / "tape"))}
    assert events["/cookie"]["rule"] == "dlp:aws-access-key-id"
    assert events["/appended"]["rule"] == "dlp:aws-access-key-id"
    cookie = dict(events["/cookie"]["request"]["headers"])["Cookie"]
    assert cookie.startswith("[redacted hmac-sha256:"), "still redacted on the tape"
    tape = tape_bytes(tmp_path / "tape")
    assert AWS_KEY_ID.encode() not in tape and GITHUB_PAT.encode() not in tape


def test_credentials_an_upstream_echoes_back_are_masked_on_the_tape(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    bearer, cookie, internal, password = (secrets.token_hex(12) for _ in range(4))
    basic = base64.b64encode(f"alice:{password}".encode()).decode()
    # Neutral keys: no DLP rule keys on them, so only echo masking can hide the values.
    echoed = {"a": bearer, "b": cookie, "c": internal}
    echoed_basic = {"d": basic, "e": f"alice:{password}", "f": password}
    json_type = (b"content-type", b"application/json")
    policy = "version: 1\nmode: observe\nredact_headers: [X-Internal-Token]\n"
    proxy = start_proxy(policy_file(policy), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        logging_upstream.respond_with = (
            200,
            [json_type, (b"x-echo", f"seen {bearer}".encode())],
            orjson.dumps(echoed),
        )
        first = client.get(
            f"{logging_upstream.url}/echo",
            headers={
                "Authorization": f"Bearer {bearer}",
                "Cookie": f"sid={cookie}",
                "X-Internal-Token": internal,
            },
        )
        logging_upstream.respond_with = (200, [json_type], orjson.dumps(echoed_basic))
        second = client.get(f"{logging_upstream.url}/echo-basic", headers={"Authorization": f"Basic {basic}"})
    proxy.flush()
    assert first.json() == echoed and second.json() == echoed_basic, "traffic itself is untouched"
    tape = tape_bytes(tmp_path / "tape")
    for value in (bearer, cookie, internal, basic, password):
        assert value.encode() not in tape, value
    events = {e["path"]: e for e in network_events(read_tape(tmp_path / "tape"))}
    body = orjson.loads(events["/echo"]["response"]["body"]["text"])
    assert all(body[k].startswith("[redacted hmac-sha256:") for k in "abc")
    assert dict(events["/echo"]["response"]["headers"])["x-echo"].startswith("seen [redacted ")


def test_common_credential_headers_are_recorded_redacted(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    values = {
        name: secrets.token_hex(16) for name in ("X-Auth-Token", "X-Goog-Api-Key", "X-Amz-Security-Token")
    }
    proxy = start_proxy(policy_file("version: 1\nmode: observe\n"), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        assert client.get(f"{logging_upstream.url}/headers", headers=values).status_code == 200
    proxy.flush()
    [event] = network_events(read_tape(tmp_path / "tape"))
    recorded = dict(event["request"]["headers"])
    assert all(recorded[name].startswith("[redacted hmac-sha256:") for name in values)
    tape = tape_bytes(tmp_path / "tape")
    assert not [v for v in values.values() if v.encode() in tape]
