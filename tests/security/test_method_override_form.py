"""Attack: run a BLOCKed method with a `_method` form field (review 2, finding 4).

Rails' Rack::MethodOverride, Laravel and Symfony run the method a POST form names in `_method`:
`curl -X POST -d _method=delete` passed a `method: DELETE` BLOCK rule and the server ran DELETE. A
POST whose body mitmproxy has buffered before the decision (every body under the streaming threshold)
is now also judged as the method its `_method` field names (urlencoded, multipart, or no Content-Type,
which Rack reads as a form), the stricter verdict winning. A multipart body is read as Rack reads it
(a quoted or upper-case `boundary=`, any multipart/* type, a part name bare or in any case: each was
missed, review 2 finding 4). When a rule names a method, a POST form's body that would stream (chunked,
or over the streaming threshold: forwarded before the decision, so its `_method` went unread) is held
until it is judged, and refused with 413 past `failcore_hold_max`.

A JSON body too (review 4, finding 6): Laravel reads a JSON request's body as its fields
(`Request::createFromBase`: `request = json()` when the Content-Type contains `/json` or `+json`) and
Symfony's `getMethod()`, with the parameter override Laravel enables, runs the method a POST's `_method`
field names: `POST {"_method":"DELETE"}` passed a `method: DELETE` BLOCK rule. A POST JSON object's
top-level `_method` strings (each duplicate key's, any `\\u` spelling of the key) are now judged like a
form's, and held like a form's when they would stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from failcore.proxy.overrides import json_override_methods, multipart_values
from tests.helpers import network_events, read_tape
from tests.security.helpers import assert_refused, plain_request, send_raw
from tests.security.upstream import LoggingUpstream

POLICY = (
    "version: 1\nmode: enforce\ndefault: ALLOW\nrules:\n  - {id: no-delete, method: DELETE, action: BLOCK}\n"
)
MULTIPART = (
    b'--XyZ\r\nContent-Disposition: form-data; name="title"\r\n\r\nmarker\r\n'
    b'--XyZ\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--XyZ--\r\n'
)
OVERRIDE_HEAD = b'Content-Disposition: form-data; name="_method"'


def post(upstream: LoggingUpstream, content_type: str, body: bytes) -> bytes:
    header = f"Content-Type: {content_type}\r\n" if content_type else ""
    return plain_request(upstream, "POST", "/repo", headers=header, body=body)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"title=marker&_method=delete"),
        ("Application/X-WWW-Form-Urlencoded; charset=UTF-8", b"title=marker&%5Fmethod=DELETE"),
        ("", b"_method=delete&title=marker"),
        ("application/x-www-form-urlencoded", b"pad=" + b"x" * 20000 + b"&_method=DELETE"),
        ("multipart/form-data; boundary=XyZ", MULTIPART),
        # Rack's MULTIPART: %r|\Amultipart/.*boundary=\"?([^\";,]+)\"?|ni (quoted, any case, any subtype)
        ('multipart/form-data; boundary="XyZ"', MULTIPART),
        ("multipart/form-data; BOUNDARY=XyZ", MULTIPART),
        ("Multipart/Mixed; boundary=XyZ", MULTIPART),
        # a part name bare, or its parameter in capitals
        ("multipart/form-data; boundary=XyZ", MULTIPART.replace(b'name="_method"', b"name=_method")),
        ("multipart/form-data; boundary=XyZ", MULTIPART.replace(b'name="_method"', b'NAME="_method"')),
        (
            "multipart/form-data; boundary=XyZ",
            MULTIPART.replace(b"Content-Disposition", b"content-disposition"),
        ),
        # review 3: spellings Rack reads and failcore missed. Rack 3.1 (handle_mime_head): a part named
        # by its Content-ID alone, a folded Content-Disposition, a parameter with no `;` before it.
        ("multipart/form-data; boundary=XyZ", MULTIPART.replace(OVERRIDE_HEAD, b"Content-ID: _method")),
        (
            "multipart/form-data; boundary=XyZ",
            MULTIPART.replace(OVERRIDE_HEAD, b'Content-Disposition: form-data;\r\n name="_method"'),
        ),
        (
            "multipart/form-data; boundary=XyZ",
            MULTIPART.replace(OVERRIDE_HEAD, b'Content-Disposition: form-data; x="a" name=_method'),
        ),
        # Rack 2.x: the unanchored, greedy %r|Content-Disposition:.*\s+name="?([^\";]*)"?|ni
        (
            "multipart/form-data; boundary=XyZ",
            MULTIPART.replace(OVERRIDE_HEAD, b'X-Content-Disposition: form-data; name="_method"'),
        ),
        (
            "multipart/form-data; boundary=XyZ",
            MULTIPART.replace(OVERRIDE_HEAD, b"Content-Disposition: form-data\tname=_method"),
        ),
        (
            "multipart/form-data; boundary=XyZ",
            MULTIPART.replace(OVERRIDE_HEAD, b'Content-Disposition: form-data; foo="; name=x" name=_method'),
        ),
        (
            "multipart/form-data; boundary=XyZ",
            MULTIPART.replace(OVERRIDE_HEAD, b'Content-Disposition: form-data; name="x name=_method"'),
        ),
        # review 4: a JSON object's top-level `_method`, as Laravel reads it
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
def test_a_method_override_form_field_is_judged(
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
        ("application/x-www-form-urlencoded", b"title=marker&_method=patch"),
        # (a JSON body's `_method` was here as a control: Laravel runs it — review 4 finding 6 — and
        # test_a_method_override_form_field_is_judged now asserts it is refused)
        ("text/plain", b"_method=DELETE&title=marker"),
        ("application/json", b'{"data": {"_method": "DELETE"}}'),  # not a top-level field
        ("application/json", b'[{"_method": "DELETE"}]'),  # not an object
        ("application/json", b'{"_method": ["DELETE"]}'),  # not a string
        ("application/json", b'{"_method": "PATCH"}'),
        ("text/plain", b'{"_method":"DELETE"}'),  # Laravel does not read it as JSON
        # an upload whose file name or content names a method is no `_method` field
        (
            "multipart/form-data; boundary=XyZ",
            MULTIPART.replace(OVERRIDE_HEAD, b'Content-Disposition: form-data; name="f"; filename="_method"'),
        ),
    ],
)
def test_other_forms_pass(
    start_proxy,
    policy_file,
    plain_logging_upstream: LoggingUpstream,
    tmp_path: Path,
    content_type: str,
    body: bytes,
) -> None:
    """The control: another method, or a body no framework reads `_method` from, is forwarded."""
    proxy = start_proxy(policy_file(POLICY))
    answer = send_raw(proxy.port, post(plain_logging_upstream, content_type, body))
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert body in plain_logging_upstream.received_bytes()
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert event["decision"] == "ALLOW"


def test_observe_mode_records_the_form_override_as_would_block(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(POLICY.replace("enforce", "observe")))
    body = b"title=marker&_method=delete"
    answer = send_raw(proxy.port, post(plain_logging_upstream, "application/x-www-form-urlencoded", body))
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert body in plain_logging_upstream.received_bytes()
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["would_block"], event["rule"]) == ("WARN", True, "no-delete")


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"title=marker&_method=delete"),
        ("application/json", b'{"title": "marker", "_method": "DELETE"}'),
    ],
)
def test_a_chunked_form_is_held_and_judged(
    start_proxy,
    policy_file,
    plain_logging_upstream: LoggingUpstream,
    tmp_path: Path,
    content_type: str,
    body: bytes,
) -> None:
    head = post(plain_logging_upstream, content_type, b"")
    head = head.replace(b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n")
    proxy = start_proxy(policy_file(POLICY))
    answer = send_raw(proxy.port, head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    proxy.flush()
    event = assert_refused(answer, plain_logging_upstream, tmp_path / "tape")
    assert (event["decision"], event["rule"]) == ("BLOCK", "no-delete")


@pytest.mark.parametrize(
    ("content_type", "body", "sets"),
    [
        ("application/x-www-form-urlencoded", b"_method=delete&pad=" + b"x" * (3 << 20), []),
        (
            "application/json",
            b'{"_method": "DELETE", "pad": "' + b"x" * 5000 + b'"}',
            ["failcore_stream_threshold=1000"],
        ),
    ],
)
def test_a_form_over_the_streaming_threshold_is_held_and_judged(
    start_proxy,
    policy_file,
    plain_logging_upstream: LoggingUpstream,
    tmp_path: Path,
    content_type: str,
    body: bytes,
    sets: list[str],
) -> None:
    proxy = start_proxy(policy_file(POLICY), sets=sets)
    answer = send_raw(proxy.port, post(plain_logging_upstream, content_type, body))
    proxy.flush()
    event = assert_refused(answer, plain_logging_upstream, tmp_path / "tape")
    assert (event["decision"], event["rule"]) == ("BLOCK", "no-delete")


def test_a_form_over_the_hold_limit_is_refused_unread(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """Past `failcore_hold_max` the body cannot be read before it would leave: 413, as for a DLP hold."""
    body = b"title=marker&pad=" + b"x" * 5000
    proxy = start_proxy(
        policy_file(POLICY), sets=["failcore_hold_max=4000", "failcore_stream_threshold=1000"]
    )
    answer = send_raw(proxy.port, post(plain_logging_upstream, "application/x-www-form-urlencoded", body))
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert plain_logging_upstream.received_bytes() == b""
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("BLOCK", "hold:too-large")


def test_a_large_upload_that_is_no_form_still_streams(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """The control: a method rule holds only forms and JSON bodies; another upload
    past the hold limit streams through."""
    body = b"\x00binary" + b"x" * 5000
    proxy = start_proxy(
        policy_file(POLICY), sets=["failcore_hold_max=4000", "failcore_stream_threshold=1000"]
    )
    answer = send_raw(proxy.port, post(plain_logging_upstream, "application/octet-stream", body))
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert body in plain_logging_upstream.received_bytes()


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        (
            'multipart/form-data; charset=x; boundary="a b"',
            b'--a b\r\nContent-Disposition: form-data; name="_method"\r\n\r\nput\r\n--a b--',
            [b"put"],
        ),
        (
            "multipart/form-data; boundary=XyZ",
            MULTIPART.replace(b'name="_method"', b"name*=UTF-8''%5Fmethod"),
            [b"DELETE"],
        ),
        ("multipart/form-data; boundary=XyZ", MULTIPART.replace(b'name="_method"', b'name="_method2"'), []),
        (
            "multipart/form-data; boundary=XyZ",
            MULTIPART.replace(b'name="_method"', b'filename="_method"'),
            [],
        ),
        ("multipart/form-data", MULTIPART, []),
        # every part that may be read as `_method` is judged (the stricter verdict wins)
        (
            "multipart/form-data; boundary=XyZ",
            b"--XyZ\r\nContent-ID: <_method>\r\n\r\nPATCH\r\n"
            b'--XyZ\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n'
            b'--XyZ\r\nContent-Disposition: form-data; name="title"\r\nContent-ID: _method\r\n\r\nput\r\n'
            b'--XyZ\r\nContent-Disposition: form-data; name="_me\\thod"\r\n\r\nget\r\n--XyZ--',
            [b"PATCH", b"DELETE", b"put", b"get"],
        ),
        # a quoted name left open, and bare with its parameter name spaced out
        ("multipart/form-data; boundary=XyZ", MULTIPART.replace(b'"_method"', b'"_method'), [b"DELETE"]),
        (
            "multipart/form-data; boundary=XyZ",
            MULTIPART.replace(b'name="_method"', b"name = _method"),
            [b"DELETE"],
        ),
        # controls: other names, and parameters that only end in `name`
        ("multipart/form-data; boundary=XyZ", MULTIPART.replace(OVERRIDE_HEAD, b"Content-ID: _method2"), []),
        ("multipart/form-data; boundary=XyZ", MULTIPART.replace(b'name="_method"', b"xname=_method"), []),
        (
            "multipart/form-data; boundary=XyZ",
            MULTIPART.replace(b'name="_method"', b"name=f; filename*=UTF-8''_method"),
            [],
        ),
    ],
)
def test_multipart_values_read_as_rack_reads_them(
    content_type: str, body: bytes, expected: list[bytes]
) -> None:
    assert multipart_values(content_type, body, "_method") == expected


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
