"""Attack: an S3 streaming upload framed in aws-chunked but without `Content-Encoding: aws-chunked`.

An S3 server decides that a PUT body is aws-chunked from `x-amz-content-sha256` alone: MinIO's
`isRequestSignStreamingV4` is `x-amz-content-sha256 == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" && PUT`
(and `isRequestSignStreamingTrailerV4` for `STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER`), whatever
Content-Encoding says; it then stores the chunks' data joined. failcore undid the framing only when
Content-Encoding named `aws-chunked`, so the same body without that header was scanned as sent: a
secret split across two chunks (`…AKIAQW\\r\\n10;chunk-signature=…\\r\\nERTY…`) was not found and went
out, and the server stored it whole.

Through the real proxy: what reached the logging upstream and what the tape holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.coding_helpers import aws_chunked, boto3_fixture
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK
from tests.security.upstream import LoggingUpstream

FIXTURE = boto3_fixture()
LEAKED = FIXTURE["document"].encode().replace(FIXTURE["placeholder"].encode(), AWS_KEY_ID.encode())


@pytest.mark.parametrize(
    ("sha256", "signed"),
    [("STREAMING-AWS4-HMAC-SHA256-PAYLOAD", True), ("STREAMING-UNSIGNED-PAYLOAD-TRAILER", False)],
)
def test_a_secret_split_across_chunks_without_the_coding_header_is_found(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path, sha256: str, signed: bool
) -> None:
    body = aws_chunked(LEAKED, 16, signed=signed)
    assert AWS_KEY_ID.encode() not in body, "split across two chunks"
    headers = {"x-amz-content-sha256": sha256, "x-amz-decoded-content-length": str(len(LEAKED))}
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        response = client.put(f"{logging_upstream.url}/bucket/key", content=body, headers=headers)
    proxy.flush()
    assert logging_upstream.received_bytes() == b"", "nothing of the request reached the upstream"
    assert response.status_code == 403
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["outcome"]) == ("BLOCK", "BLOCKED")
