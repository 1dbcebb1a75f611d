"""Attack: a gzip'd secret under a stacked Content-Encoding that names a coding failcore does not decode
(review 2, finding 3).

`Content-Encoding: x-foo, gzip` (or `aws-chunked, gzip`, `gzip, x-foo`) over gzip(secret): one coding
failcore did not know stopped all decoding, so the body was scanned only as sent (compressed), the
request went out (Apache's mod_deflate input filter inflates a last `gzip` token whatever precedes it)
and was not even called unscannable; the tape kept the gzip bytes as base64, from which the unmasked
secret came back with gzip.decompress. Now a coding failcore does not know is read as no coding and the
known ones around it are undone, for the decision and the tape alike (the secret is found, refused and
masked), and a stack holding one is `dlp.unscannable` (a lone one, S3's `aws-chunked`, is scanned as
sent: test_deflate_window_bits).

Each through the real proxy; each asserts what reached the logging upstream and what the tape holds,
its base64 bodies decoded (and inflated) too."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.coding_helpers import recoverable
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK
from tests.security.upstream import LoggingUpstream

SECRET = f'{{"note": "deploy", "key": "{AWS_KEY_ID}"}}'.encode()
CLEAN = b'{"note": "deploy", "key": "nothing-secret-here"}'
STACKS = ["x-foo, gzip", "aws-chunked, gzip", "gzip, x-foo"]


def send(proxy: Any, upstream: LoggingUpstream, encoding: str, body: bytes) -> Any:
    with proxied_client(proxy) as client:
        return client.post(
            f"{upstream.url}/stacked",
            content=gzip.compress(body),
            headers={"content-encoding": encoding, "content-type": "application/json"},
        )


@pytest.mark.parametrize("encoding", STACKS)
def test_a_gzipped_secret_under_an_unknown_coding_is_refused_and_masked(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path, encoding: str
) -> None:
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    response = send(proxy, logging_upstream, encoding, SECRET)
    proxy.flush()
    assert response.status_code == 403
    assert response.headers["x-failcore-rule"] == "dlp:aws-access-key-id"
    assert logging_upstream.received_bytes() == b"", "nothing of the request reached the upstream"
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["outcome"]) == ("BLOCK", "BLOCKED")
    assert any(h["location"].startswith("request.body") for h in event["dlp"]["hits"])
    assert not any(AWS_KEY_ID.encode() in data for data in recoverable(tmp_path / "tape"))


@pytest.mark.parametrize("encoding", STACKS)
def test_the_tape_records_it_decoded_and_masked_in_observe_mode(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path, encoding: str
) -> None:
    proxy = start_proxy(policy_file("version: 1\nmode: observe\n"), upstream_ca=logging_upstream.ca_path)
    response = send(proxy, logging_upstream, encoding, SECRET)
    proxy.flush()
    assert response.status_code == 200
    [event] = network_events(read_tape(tmp_path / "tape"))
    body = event["request"]["body"]
    assert body["text"].startswith('{"note": "deploy", "key": "'), "recorded with gzip undone"
    assert body["dlp_masked"] == 1 and "decode_error" in body and body["sha256_of"] == "wire"
    assert [h["rule"] for h in event["dlp"]["hits"]] == ["aws-access-key-id"]
    assert not any(AWS_KEY_ID.encode() in data for data in recoverable(tmp_path / "tape"))


@pytest.mark.parametrize("encoding", STACKS)
def test_a_clean_body_under_such_a_stack_is_unscannable(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path, encoding: str
) -> None:
    """A receiver that knows `x-foo` reads something failcore did not: `dlp.unscannable` decides
    (default: refuse; `WARN` forwards it with a warning)."""
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    refused = send(proxy, logging_upstream, encoding, CLEAN)
    proxy.flush()
    assert refused.status_code == 403 and refused.headers["x-failcore-rule"] == "dlp:unscannable"
    assert logging_upstream.received_bytes() == b""
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("BLOCK", "dlp:unscannable")
    assert any(w["reason"] == "dlp_unscannable" for w in event["warnings"])
