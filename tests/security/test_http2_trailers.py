"""Attack: a secret in HTTP/2 request trailers. mitmproxy reads a request's trailers with its body and
forwards them after the `request` hook; DLP used to scan the headers and body only.

An h2 client (the `h2` library mitmproxy itself uses) talks HTTP/2 to the proxy through a CONNECT
tunnel and sends the secret in a trailer field."""

from __future__ import annotations

from tests.helpers import network_events, read_tape
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK, h2_post_with_trailers, tape_bytes
from tests.security.upstream import LoggingUpstream


def test_a_secret_in_http2_trailers_is_blocked(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    # Lazy: the client's TLS (and its h2) is settled before the HTTP/1.1-only upstream is dialled.
    proxy = start_proxy(
        policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path, sets=["connection_strategy=lazy"]
    )
    status = h2_post_with_trailers(proxy, logging_upstream, [("x-checksum", AWS_KEY_ID)])
    proxy.flush()
    assert status == 403
    assert logging_upstream.received_bytes() == b"", "neither the body nor the trailer reached the upstream"
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"], event["outcome"]) == (
        "BLOCK",
        "dlp:aws-access-key-id",
        "BLOCKED",
    )
    tape = b"".join(p.read_bytes() for p in (tmp_path / "tape").glob("seg-*.jsonl"))
    assert AWS_KEY_ID.encode() not in tape
    # The trailers are evidence too: on the tape by name, the secret's value masked.
    (trailer,) = event["request"]["trailers"]
    assert trailer[0] == "x-checksum" and trailer[1] != AWS_KEY_ID
    hits = [(h["rule"], h["location"]) for h in event["dlp"]["hits"]]
    assert ("aws-access-key-id", "request.trailer:x-checksum") in hits, hits


def test_request_trailers_are_recorded(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """A clean request's trailers reach the upstream and the tape holds them as sent (a credential
    trailer redacted like the header it would be)."""
    proxy = start_proxy(
        policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path, sets=["connection_strategy=lazy"]
    )
    trailers = [("x-checksum", "sha256-trailer-marker"), ("authorization", "Bearer trailer-credential")]
    status = h2_post_with_trailers(proxy, logging_upstream, trailers)
    proxy.flush()
    assert status == 200
    assert b"body-marker" in logging_upstream.received_bytes()
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert event["decision"] == "ALLOW"
    recorded = event["request"]["trailers"]
    assert ["x-checksum", "sha256-trailer-marker"] in recorded, recorded
    assert [name for name, _ in recorded] == ["x-checksum", "authorization"]
    assert "trailer-credential" not in dict(recorded)["authorization"]
    assert b"trailer-credential" not in tape_bytes(tmp_path / "tape")
