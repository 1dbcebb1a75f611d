"""Attack: carry a secret out after an Authorization scheme other than Bearer/Basic/Token (adversarial
review 4, finding 7).

`Authorization: Bearer sk-… AKIA…` was refused (the key after the token is foreign), but for any other
scheme the whole rest of the header was taken as the header's own credential: `Digest sk-… AKIA…` and
`Custom x AKIA…` passed a DLP BLOCK. Now an unknown scheme owns one token, as a token scheme does, and a
parameterised scheme (SigV4, Digest, OAuth 1.0a, HTTP Signatures, MAC) owns only its credential
parameters' values; everything else in the header is judged as a foreign secret. The tape records the
refused key only as a fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest

from failcore.dlp import DlpEngine, builtin_rules
from failcore.evidence.dlp import foreign_credential_hits
from tests.helpers import network_events, read_tape
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK, assert_refused, plain_request, send_raw, tape_bytes
from tests.security.upstream import LoggingUpstream

SIGNATURE = "fe5f80f77d5fa3beca038a248ff027d0" * 2


@pytest.fixture(scope="module")
def engine() -> DlpEngine:
    return DlpEngine(builtin_rules(), salt=b"s")


@pytest.mark.parametrize(
    "value",
    [
        f"Digest sk-proj-abc123 {AWS_KEY_ID}",
        f"Custom x {AWS_KEY_ID}",
        f"Custom x,{AWS_KEY_ID}",
        f'Digest username="bob", realm="r", nonce="n1", uri="/", response="{SIGNATURE[:32]}", '
        f'x="{AWS_KEY_ID}"',
        f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/s3/aws4_request, "
        f"SignedHeaders=host;x-amz-date;{AWS_KEY_ID}, Signature={SIGNATURE}",
    ],
)
def test_a_secret_after_another_scheme_is_refused(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, value: str
) -> None:
    proxy = start_proxy(policy_file(DLP_BLOCK))
    request = plain_request(plain_logging_upstream, "GET", "/authz", headers=f"Authorization: {value}\r\n")
    answer = send_raw(proxy.port, request)
    proxy.flush()
    event = assert_refused(answer, plain_logging_upstream, tmp_path / "tape")
    assert (event["decision"], event["rule"]) == ("BLOCK", "dlp:aws-access-key-id")
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")


def test_sigv4_with_its_own_key_id_passes(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """The control: SigV4's own access key id in its Credential parameter is what the header is for."""
    value = (
        f"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/20260101/us-east-1/s3/aws4_request, "
        f"SignedHeaders=host;x-amz-date, Signature={SIGNATURE}"
    )
    proxy = start_proxy(policy_file(DLP_BLOCK))
    answer = send_raw(
        proxy.port, plain_request(plain_logging_upstream, "GET", "/s3", headers=f"Authorization: {value}\r\n")
    )
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert b"GET /s3 HTTP/1.1" in plain_logging_upstream.received_bytes()
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert event["decision"] == "ALLOW"


@pytest.mark.parametrize(
    ("value", "foreign"),
    [
        (f"Custom {AWS_KEY_ID}", False),  # an unknown scheme's one token is its credential
        (f"Custom key={AWS_KEY_ID}", False),
        (f'Digest username="{AWS_KEY_ID}", response="{SIGNATURE[:32]}"', False),
        (f'OAuth oauth_consumer_key="{AWS_KEY_ID}", oauth_signature="x"', False),
        (f'OAuth oauth_consumer_key="k", oauth_callback="{AWS_KEY_ID}"', True),
        (f"Basic abc {AWS_KEY_ID}", True),
        (f"AWS {AWS_KEY_ID}:{SIGNATURE[:28]}", False),  # SigV2
    ],
)
def test_which_parts_of_an_authorization_header_are_its_own(engine, value: str, foreign: bool) -> None:
    hits = foreign_credential_hits(engine, [("Authorization", value)])
    assert bool(hits) is foreign, hits
