"""Attacks: a secret hidden from DLP by how the body is encoded.

- multi-member gzip (`gzip("hello ") + gzip(secret)`): servers decode every member, failcore read one;
- stacked codings (`Content-Encoding: gzip, gzip`) and two Content-Encoding headers;
- a gzip body padded to decode past the 64 MiB decode limit (about 65 KB on the wire): it cannot be
  scanned whole, so the policy's `dlp.unscannable` decides (default under a BLOCK rule: refuse).

Each through the real proxy; each asserts what reached the logging upstream and what the tape holds."""

from __future__ import annotations

import gzip

import pytest

from failcore.evidence import DECODE_LIMIT
from tests.helpers import network_events, proxied_client, read_tape
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK, tape_bytes
from tests.security.upstream import LoggingUpstream

SECRET = f'{{"note": "deploy", "key": "{AWS_KEY_ID}"}}'.encode()


ATTACKS = {
    "multi-member gzip": ([("content-encoding", "gzip")], gzip.compress(b"hello ") + gzip.compress(SECRET)),
    "gzip, gzip": ([("content-encoding", "gzip, gzip")], gzip.compress(gzip.compress(SECRET))),
    "two Content-Encoding headers": (
        [("content-encoding", "gzip"), ("content-encoding", "gzip")],
        gzip.compress(gzip.compress(SECRET)),
    ),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_an_encoded_secret_is_decoded_and_blocked(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path, attack: str
) -> None:
    headers, wire = ATTACKS[attack]
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        response = client.post(f"{logging_upstream.url}/encoded", content=wire, headers=headers)
    proxy.flush()
    assert response.status_code == 403
    assert response.headers["x-failcore-rule"] == "dlp:aws-access-key-id"
    assert logging_upstream.received_bytes() == b"", "nothing of the request reached the upstream"
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["outcome"]) == ("BLOCK", "BLOCKED")
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_the_tape_records_every_member_and_coding_decoded_and_masked(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path, attack: str
) -> None:
    headers, wire = ATTACKS[attack]
    proxy = start_proxy(policy_file("version: 1\nmode: observe\n"), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        response = client.post(f"{logging_upstream.url}/encoded", content=wire, headers=headers)
    proxy.flush()
    assert response.status_code == 200
    [event] = network_events(read_tape(tmp_path / "tape"))
    body = event["request"]["body"]
    expected = (b"hello " if attack == "multi-member gzip" else b"") + SECRET
    assert body["decoded_size"] == len(expected) and body["sha256_of"] == "decoded"
    assert body["text"].startswith(expected[: expected.index(b'"key"')].decode()), "all of it, not one member"
    assert AWS_KEY_ID not in body["text"] and body["dlp_masked"] == 1
    assert [h["rule"] for h in event["dlp"]["hits"]] == ["aws-access-key-id"]
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")


PADDED = gzip.compress(b" " * (DECODE_LIMIT + 1024) + SECRET, compresslevel=9)


def test_a_body_padded_past_the_decode_limit_is_refused_as_unscannable(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    assert len(PADDED) < 100_000  # small on the wire
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        response = client.post(
            f"{logging_upstream.url}/padded", content=PADDED, headers={"content-encoding": "gzip"}
        )
    proxy.flush()
    assert response.status_code == 403
    assert response.headers["x-failcore-rule"] == "dlp:unscannable"
    assert logging_upstream.received_bytes() == b""
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"], event["outcome"]) == ("BLOCK", "dlp:unscannable", "BLOCKED")
    assert any(w["reason"] == "dlp_unscannable" for w in event["warnings"])


def test_unscannable_warn_forwards_the_body_and_records_why(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    policy = DLP_BLOCK + "  unscannable: WARN\n"
    proxy = start_proxy(policy_file(policy), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        response = client.post(
            f"{logging_upstream.url}/padded", content=PADDED, headers={"content-encoding": "gzip"}
        )
    proxy.flush()
    assert response.status_code == 200
    assert PADDED[-200:] in logging_upstream.received_bytes()
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("WARN", "dlp:unscannable")
    assert any(w["reason"] == "dlp_unscannable" for w in event["warnings"])
