"""Attack: run a BLOCKed method with `_method` in a JSON body (adversarial review 4, finding 6).

Laravel reads a JSON request's body as its fields (`Request::createFromBase`: `request = json()` when
the Content-Type contains `/json` or `+json`) and Symfony's `getMethod()`, with the parameter override
Laravel enables, runs the method a POST's `_method` field names: `POST {"_method":"DELETE"}` passed a
`method: DELETE` BLOCK rule. A POST JSON object's top-level `_method` strings (each duplicate key's,
any `\\u` spelling of the key) are now judged like a form's; when a rule names a method, a JSON body
that would stream is held until judged."""

from __future__ import annotations

from pathlib import Path

import pytest

from failcore.proxy.overrides import json_override_methods
from tests.helpers import network_events, read_tape
from tests.security.helpers import assert_refused, plain_request, send_raw
from tests.security.upstream import LoggingUpstream

POLICY = (
    "version: 1\nmode: enforce\ndefault: ALLOW\nrules:\n  - {id: no-delete, method: DELETE, action: BLOCK}\n"
)


def post(upstream: LoggingUpstream, content_type: str, body: bytes) -> bytes:
    return plain_request(upstream, "POST", "/repo", headers=f"Content-Type: {content_type}\r\n", body=body)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"_method":"DELETE"}'),
        ("application/json; charset=utf-8", b'{"title": "marker", "_method": "delete"}'),
        ("application/vnd.api+json", b'{"_method":"DELETE"}'),
        ("text/json", b'{"_method":"DELETE"}'),
        ("application/json", b'{"\\u005fmethod":"DELETE"}'),  # the key spelled with escapes
        ("application/json", b'{"_method":"\\u0044ELETE"}'),
        ("application/json", b'{"_method":"PATCH","_method":"DELETE"}'),  # PHP keeps the last
        ("application/json", b'{"_method":"DELETE","_method":"PATCH"}'),  # others the first
        ("application/json", b'{"pad": "' + b"x" * 20000 + b'", "_method": "DELETE"}'),
    ],
)
def test_a_json_method_override_is_judged(
    start_proxy,
    policy_file,
    plain_logging_upstream: LoggingUpstream,
    tmp_path: Path,
    content_type: str,
    body: bytes,
) -> None:
    proxy = start_proxy(policy_file(POLICY))
    answer = send_raw(proxy.port, post(plain_logging_upstream, content_type, body))
    proxy.flush()
    event = assert_refused(answer, plain_logging_upstream, tmp_path / "tape")
    assert (event["decision"], event["rule"]) == ("BLOCK", "no-delete")


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"data": {"_method": "DELETE"}}'),  # not a top-level field
        ("application/json", b'[{"_method": "DELETE"}]'),  # not an object
        ("application/json", b'{"_method": ["DELETE"]}'),  # not a string
        ("application/json", b'{"_method": "PATCH"}'),
        ("text/plain", b'{"_method":"DELETE"}'),  # Laravel does not read it as JSON
    ],
)
def test_other_json_passes(
    start_proxy,
    policy_file,
    plain_logging_upstream: LoggingUpstream,
    tmp_path: Path,
    content_type: str,
    body: bytes,
) -> None:
    proxy = start_proxy(policy_file(POLICY))
    answer = send_raw(proxy.port, post(plain_logging_upstream, content_type, body))
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert body in plain_logging_upstream.received_bytes()
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("ALLOW", None)


def test_a_chunked_json_body_is_held_and_judged(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    body = b'{"title": "marker", "_method": "DELETE"}'
    head = post(plain_logging_upstream, "application/json", b"")
    head = head.replace(b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n")
    proxy = start_proxy(policy_file(POLICY))
    answer = send_raw(proxy.port, head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    proxy.flush()
    event = assert_refused(answer, plain_logging_upstream, tmp_path / "tape")
    assert (event["decision"], event["rule"]) == ("BLOCK", "no-delete")


def test_a_json_body_over_the_streaming_threshold_is_held_and_judged(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    body = b'{"_method": "DELETE", "pad": "' + b"x" * 5000 + b'"}'
    proxy = start_proxy(policy_file(POLICY), sets=["failcore_stream_threshold=1000"])
    answer = send_raw(proxy.port, post(plain_logging_upstream, "application/json", body))
    proxy.flush()
    event = assert_refused(answer, plain_logging_upstream, tmp_path / "tape")
    assert (event["decision"], event["rule"]) == ("BLOCK", "no-delete")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"_method": " put "}', ["PUT"]),
        (b'{"a": 1}', []),
        (b"not json _method", []),
        (b'{"_method": "DELETE"', []),  # cut short: Laravel's json() reads nothing either
        (b"[" * 100000 + b"]" * 100000, []),
    ],
)
def test_json_override_methods(body: bytes, expected: list[str]) -> None:
    assert json_override_methods(body) == expected
