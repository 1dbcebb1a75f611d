"""Attack: a secret in an S3 upload in aws-chunked framing (what boto3 and the other AWS SDKs send).

failcore did not decode `aws-chunked`: a lone one was scanned as sent, so a secret split across two
chunks (`…AKIAQW\\r\\n10\\r\\nERTY…`, as botocore splits a body one chunk a read; S3 stores it joined)
was not found and went out; and boto3's `gzip,aws-chunked` (a `ContentEncoding="gzip"` upload) did not
decode at all, so every such upload, clean or not, was refused as `dlp.unscannable`. A malformed framing
was scanned as sent and forwarded. Now the framing is undone (bounded; a framing error is unscannable)
and the data scanned; the framing is scanned as sent too.

The bodies are botocore's own (tests/data/aws_chunked, the secret put in its placeholder) or framed as
botocore frames them (checked byte for byte in tests/test_aws_chunked.py). Each through the real proxy,
each asserting what reached the logging upstream and what the tape holds."""

from __future__ import annotations

import gzip
from pathlib import Path

import httpx
import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.coding_helpers import aws_chunked, boto3_fixture, crc32_trailer, recoverable
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK
from tests.security.upstream import LoggingUpstream

FIXTURE = boto3_fixture()
PLACEHOLDER = FIXTURE["placeholder"].encode()
LEAKED = FIXTURE["document"].encode().replace(PLACEHOLDER, AWS_KEY_ID.encode())
CLEAN = FIXTURE["document"].encode()


def _put(proxy, upstream: LoggingUpstream, body: bytes, headers: dict[str, str]) -> httpx.Response:  # type: ignore[no-untyped-def]
    with proxied_client(proxy) as client:
        return client.put(f"{upstream.url}/bucket/key", content=body, headers=headers)


def _boto3(index: int, body: bytes | None = None) -> tuple[bytes, dict[str, str]]:
    """botocore's request `index`: its body (or `body`) and the headers that describe it."""
    request = FIXTURE["requests"][index]
    headers = {k: v for k, v in request["header"].items() if k != "transfer-encoding"}
    return (request["body"] if body is None else body), headers


def _assert_refused_for_the_secret(
    proxy, response: httpx.Response, upstream: LoggingUpstream, tape: Path
) -> None:  # type: ignore[no-untyped-def]
    proxy.flush()
    assert response.status_code == 403
    assert response.headers["x-failcore-rule"] == "dlp:aws-access-key-id"
    assert upstream.received_bytes() == b"", "nothing of the request reached the upstream"
    [event] = network_events(read_tape(tape))
    assert (event["decision"], event["outcome"]) == ("BLOCK", "BLOCKED")
    assert not any(AWS_KEY_ID.encode() in data for data in recoverable(tape))


def test_a_secret_split_across_botocore_chunks_is_found(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    recorded, headers = _boto3(0)
    body = recorded.replace(PLACEHOLDER[:5], AWS_KEY_ID[:5].encode(), 1).replace(
        PLACEHOLDER[5:], AWS_KEY_ID[5:].encode(), 1
    )
    assert AWS_KEY_ID.encode() not in body, "split across two chunks, as botocore sent it"
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    _assert_refused_for_the_secret(
        proxy, _put(proxy, logging_upstream, body, headers), logging_upstream, tmp_path / "tape"
    )


def test_a_secret_in_a_gzip_aws_chunked_upload_is_found(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    zipped = gzip.compress(LEAKED)
    _, headers = _boto3(1, b"")
    assert headers["content-encoding"] == "gzip,aws-chunked"
    body = aws_chunked(zipped, len(zipped), trailer=crc32_trailer(zipped))
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    _assert_refused_for_the_secret(
        proxy, _put(proxy, logging_upstream, body, headers), logging_upstream, tmp_path / "tape"
    )


def test_a_clean_gzip_aws_chunked_upload_goes_out_as_sent_and_is_recorded_decoded(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """botocore's own `gzip,aws-chunked` upload of a clean document: scanned, not unscannable."""
    body, headers = _boto3(1)
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    response = _put(proxy, logging_upstream, body, headers)
    proxy.flush()
    assert response.status_code == 200
    assert body in logging_upstream.received_bytes(), "forwarded as sent"
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert event["decision"] == "ALLOW" and not event.get("warnings")
    recorded = event["request"]["body"]
    assert recorded["text"] == CLEAN.decode() and recorded["sha256_of"] == "decoded"


@pytest.mark.parametrize("size", [7, 16])
def test_a_secret_split_across_signed_chunks_is_found(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path, size: int
) -> None:
    """SigV4 signed chunks (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`, Amazon S3's framing)."""
    body = aws_chunked(LEAKED, size, signed=True)
    assert AWS_KEY_ID.encode() not in body
    headers = {
        "content-encoding": "aws-chunked",
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "x-amz-decoded-content-length": str(len(LEAKED)),
    }
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    _assert_refused_for_the_secret(
        proxy, _put(proxy, logging_upstream, body, headers), logging_upstream, tmp_path / "tape"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"7;x-smuggled=1\r\nclean d\r\n0\r\n\r\n",  # an extension that is no chunk signature
        b"3\r\ncleaner\r\n0\r\n\r\n",  # a chunk longer than its size
        b"7\r\nclean d\r\n0\r\n\r\nafter the end",
    ],
    ids=["extension", "overlong-chunk", "after-the-end"],
)
def test_a_malformed_framing_is_unscannable(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path, body: bytes
) -> None:
    """A receiver reads a framing failcore cannot in its own way: never taken as scanned whole."""
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    response = _put(proxy, logging_upstream, body, {"content-encoding": "aws-chunked"})
    proxy.flush()
    assert response.status_code == 403 and response.headers["x-failcore-rule"] == "dlp:unscannable"
    assert logging_upstream.received_bytes() == b""
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert any(w["reason"] == "dlp_unscannable" for w in event["warnings"])
