"""Attack: a script loaded AFTER failcore (`mitmdump -s addons/failcore_addon.py -s after.py`) sets
`flow.request.stream = True` or `flow.response.stream = True` in its `requestheaders` /
`responseheaders` hook. mitmproxy calls that hook after failcore's, so failcore's hold and stream tap
never saw the stream: a small POST holding an AWS key passed a DLP BLOCK (200, the upstream got the
key, the tape said ALLOW), and a response streamed past `dlp.stream: strict` left no DLP evidence.

failcore now adds a tail addon once the proxy runs (failcore.proxy.tail), after every script, that
takes such a stream back (a body the policy must read whole) or taps and guards it. Each test runs the
real mitmdump with failcore, then the script, and asserts what reached the logging upstream, what the
client got and what the tape holds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import orjson

from tests.helpers import network_events, read_tape
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK, run_mitmdump_any_port, stop, tape_bytes
from tests.security.upstream import LoggingUpstream

STRICT = DLP_BLOCK + "  stream: strict\n"

REQUEST_SCRIPT = """
def requestheaders(flow):
    flow.request.stream = True
"""

RESPONSE_SCRIPT = """
def responseheaders(flow):
    flow.response.stream = True
"""


def _event(tape: Path, path: str) -> dict:
    [event] = [e for e in network_events(read_tape(tape)) if e["path"] == path]
    return event


def _assert_small_blocked(upstream: LoggingUpstream, tape: Path) -> None:
    """The POST to /small holding the key never reached the upstream; the tape has it BLOCKED, masked."""
    seen = upstream.received_bytes()
    assert AWS_KEY_ID.encode() not in seen and b"/small" not in seen
    event = _event(tape, "/small")
    assert (event["decision"], event["outcome"], event["rule"]) == (
        "BLOCK",
        "BLOCKED",
        "dlp:aws-access-key-id",
    )
    assert AWS_KEY_ID.encode() not in tape_bytes(tape)


def _start(tmp_path: Path, policy_text: str, script: str) -> tuple[int, object, Path]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text)
    after = tmp_path / "after.py"
    after.write_text(script)
    # run_mitmdump puts `-s addons/failcore_addon.py` first: this script is loaded after failcore.
    process, log, port = run_mitmdump_any_port(
        tmp_path, "-s", str(after), "--set", f"failcore_policy={policy}"
    )
    return port, process, log


def test_a_request_streamed_by_a_later_script_is_still_held_and_blocked(
    plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    port, process, _ = _start(tmp_path, DLP_BLOCK, REQUEST_SCRIPT)
    try:
        with httpx.Client(proxy=f"http://127.0.0.1:{port}", timeout=30) as client:
            response = client.post(
                f"http://127.0.0.1:{plain_logging_upstream.port}/small",
                content=orjson.dumps({"k": AWS_KEY_ID}),
                headers={"content-type": "application/json"},
            )
    finally:
        stop(process)  # flushes the tape
    assert response.status_code == 403
    assert response.headers["x-failcore-rule"] == "dlp:aws-access-key-id"
    _assert_small_blocked(plain_logging_upstream, tmp_path / "tape")


def test_a_response_streamed_by_a_later_script_is_still_scanned_and_cut(
    plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    answer = b"x" * 2000 + b" key " + AWS_KEY_ID.encode() + b" end"
    plain_logging_upstream.respond_with = (200, [(b"content-type", b"text/plain")], answer)
    port, process, _ = _start(tmp_path, STRICT, RESPONSE_SCRIPT)
    received = b""
    try:
        with (
            httpx.Client(proxy=f"http://127.0.0.1:{port}", timeout=30) as client,
            client.stream("GET", f"http://127.0.0.1:{plain_logging_upstream.port}/download") as response,
        ):
            try:
                for chunk in response.iter_raw():
                    received += chunk
            except httpx.TransportError:
                pass  # the cut
    finally:
        stop(process)
    assert AWS_KEY_ID.encode() not in received, "the client got the key"
    event = _event(tmp_path / "tape", "/download")
    assert event["cut"]["reason"] == "dlp" and "aws-access-key-id" in event["cut"]["detail"]
    recorded = event["response"]["body"]
    assert recorded is not None and recorded["size"] > 0
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")


def test_bodies_streamed_by_a_later_script_are_recorded(
    plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """Observe mode (nothing to hold): both bodies stream as the script asks, and both are on the tape."""
    sent = b"request-filler " * 200
    answer = b"response-filler " * 200
    plain_logging_upstream.respond_with = (200, [(b"content-type", b"text/plain")], answer)
    port, process, _ = _start(tmp_path, "version: 1\nmode: observe\n", REQUEST_SCRIPT + RESPONSE_SCRIPT)
    try:
        with httpx.Client(proxy=f"http://127.0.0.1:{port}", timeout=30) as client:
            response = client.post(f"http://127.0.0.1:{plain_logging_upstream.port}/upload", content=sent)
    finally:
        stop(process)
    assert response.status_code == 200 and response.content == answer
    assert sent in plain_logging_upstream.received_bytes()
    event = _event(tmp_path / "tape", "/upload")
    for recorded, body in ((event["request"]["body"], sent), (event["response"]["body"], answer)):
        assert recorded is not None
        assert recorded["size"] == len(body)
        assert recorded["sha256"] == hashlib.sha256(body).hexdigest()


class _StreamsRequests:
    """An addon added after failcore while the proxy runs (no script: `master.addons.add`)."""

    def requestheaders(self, flow) -> None:  # type: ignore[no-untyped-def]
        flow.request.stream = True


def test_a_request_streamed_by_an_addon_added_while_the_proxy_runs_is_still_blocked(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The tail is mounted only when something after failcore could stream (failcore.proxy.tail): an
    addon added once exchanges have passed must still meet it before its first hook."""
    proxy = start_proxy(policy_file(DLP_BLOCK))
    url = f"http://127.0.0.1:{plain_logging_upstream.port}"
    with httpx.Client(proxy=f"http://127.0.0.1:{proxy.port}", timeout=30) as client:
        assert client.post(f"{url}/before", content=b"{}").status_code == 200
        proxy.call(lambda: proxy.proxy.master.addons.add(_StreamsRequests()))  # type: ignore[union-attr]
        response = client.post(
            f"{url}/small",
            content=orjson.dumps({"k": AWS_KEY_ID}),
            headers={"content-type": "application/json"},
        )
    proxy.stop()
    assert response.status_code == 403
    assert b"/before" in plain_logging_upstream.received_bytes()
    _assert_small_blocked(plain_logging_upstream, tmp_path / "tape")
