"""Attack: mitmproxy's stock `stream_large_bodies` option (`--set stream_large_bodies=10k`, common for
big transfers) used to switch failcore off for every body over that size. mitmproxy streams such a body
on its own, before failcore's `requestheaders` hook runs (a Content-Length over the size) or in the
middle of a body failcore held (a chunked one that grows past it), and a stream it starts is neither
held for the decision, nor recorded, nor scanned: a 20 KB JSON body with an AWS key passed a DLP BLOCK.

failcore now takes the option over (failcore.proxy.settings): it streams those bodies itself, tapped,
and still holds the ones its policy must read whole. Each test goes through the real proxy started with
the option, or a real `mitmdump --set stream_large_bodies=10k`, and asserts what reached the logging
upstream and what the tape holds."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK, run_mitmdump_any_port, stop, tape_bytes
from tests.security.upstream import LoggingUpstream

OPTION = "stream_large_bodies=10k"
STRICT = DLP_BLOCK + "  stream: strict\n"


def large_json_with_key() -> bytes:
    """20 KB of JSON (twice the option's 10 KiB), the key at its start."""
    return orjson.dumps({"k": AWS_KEY_ID, "pad": "x" * 20_000})


def chunked(body: bytes) -> Iterator[bytes]:
    """A generator body: httpx sends it chunked, no Content-Length; mitmproxy switches it to a stream
    once more than 10 KiB of it are buffered."""
    for i in range(0, len(body), 4096):
        yield body[i : i + 4096]


def _event(tape: Path, path: str) -> dict:
    [event] = [e for e in network_events(read_tape(tape)) if e["path"] == path]
    return event


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_large_body_with_a_secret_is_blocked_with_stream_large_bodies_set(
    framing: str, start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    proxy = start_proxy(policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path, sets=[OPTION])
    body = large_json_with_key()
    content = body if framing == "content-length" else chunked(body)
    with proxied_client(proxy) as client:
        response = client.post(
            f"{logging_upstream.url}/large", content=content, headers={"content-type": "application/json"}
        )
    proxy.flush()
    assert response.status_code == 403
    assert response.headers["x-failcore-rule"] == "dlp:aws-access-key-id"
    seen = logging_upstream.received_bytes()
    assert AWS_KEY_ID.encode() not in seen and b"/large" not in seen
    event = _event(tmp_path / "tape", "/large")
    assert (event["decision"], event["outcome"], event["rule"]) == (
        "BLOCK",
        "BLOCKED",
        "dlp:aws-access-key-id",
    )
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")


def test_large_bodies_are_recorded_with_stream_large_bodies_set(
    start_proxy, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """Observe mode (nothing to hold): both bodies stream, and both are on the tape."""
    proxy = start_proxy(upstream_ca=logging_upstream.ca_path, sets=[OPTION])
    sent = b"request-filler " * 2000  # 30 000 bytes
    answer = b"response-filler " * 2000  # 32 000 bytes
    logging_upstream.respond_with = (200, [(b"content-type", b"text/plain")], answer)
    with proxied_client(proxy) as client:
        response = client.post(f"{logging_upstream.url}/upload", content=sent)
    proxy.flush()
    assert response.status_code == 200 and response.content == answer
    assert sent in logging_upstream.received_bytes()
    event = _event(tmp_path / "tape", "/upload")
    for recorded, body in ((event["request"]["body"], sent), (event["response"]["body"], answer)):
        assert recorded is not None
        assert recorded["size"] == len(body)
        assert recorded["sha256"] == hashlib.sha256(body).hexdigest()


def test_strict_stream_dlp_cuts_a_large_response_with_stream_large_bodies_set(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    proxy = start_proxy(policy_file(STRICT), upstream_ca=logging_upstream.ca_path, sets=[OPTION])
    answer = b"x" * 20_000 + b" key " + AWS_KEY_ID.encode() + b" end"
    logging_upstream.respond_with = (200, [(b"content-type", b"text/plain")], answer)
    received = b""
    with (
        proxied_client(proxy) as client,
        client.stream("GET", f"{logging_upstream.url}/download") as response,
    ):
        try:
            for chunk in response.iter_raw():
                received += chunk
        except httpx.TransportError:
            pass  # the cut
    assert AWS_KEY_ID.encode() not in received, "the client got the key"
    proxy.flush()
    event = _event(tmp_path / "tape", "/download")
    assert event["cut"]["reason"] == "dlp" and "aws-access-key-id" in event["cut"]["detail"]
    assert event["response"]["body"] is not None
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")


def test_mitmdump_with_stream_large_bodies_still_blocks_and_says_so(
    plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """The command line users type: `mitmdump -s addons/failcore_addon.py --set stream_large_bodies=10k`."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(DLP_BLOCK)
    process, log, port = run_mitmdump_any_port(
        tmp_path, "--set", OPTION, "--set", f"failcore_policy={policy}"
    )
    try:
        with httpx.Client(proxy=f"http://127.0.0.1:{port}", timeout=30) as client:
            response = client.post(
                f"http://127.0.0.1:{plain_logging_upstream.port}/large",
                content=large_json_with_key(),
                headers={"content-type": "application/json"},
            )
    finally:
        stop(process)
    assert response.status_code == 403
    assert AWS_KEY_ID.encode() not in plain_logging_upstream.received_bytes()
    event = _event(tmp_path / "tape", "/large")
    assert (event["decision"], event["rule"]) == ("BLOCK", "dlp:aws-access-key-id")
    text = log.read_text(errors="replace")
    assert "stream_large_bodies=10k is taken over by failcore" in text, text
