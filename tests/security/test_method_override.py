"""Attack: run a BLOCKed method by asking the server to override the request line's (adversarial
review, finding 4).

POST with `X-HTTP-Method-Override: DELETE` passed a `method: DELETE` BLOCK rule, and Flask's documented
override middleware (like Express's method-override, ASP.NET, Google APIs) ran DELETE. A request that
names another method in X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override or a `_method` query
parameter is now judged as both methods, the stricter verdict winning."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import network_events, read_tape
from tests.security.helpers import assert_refused, plain_request, send_raw
from tests.security.upstream import LoggingUpstream

POLICY = (
    "version: 1\nmode: enforce\ndefault: ALLOW\nrules:\n  - {id: no-delete, method: DELETE, action: BLOCK}\n"
)


def post(upstream: LoggingUpstream, path: str, header: str = "") -> bytes:
    return plain_request(upstream, "POST", path, headers=header, body=b"marker")


@pytest.mark.parametrize(
    ("path", "header"),
    [
        ("/repo", "X-HTTP-Method-Override: DELETE\r\n"),
        ("/repo", "x-http-method: delete\r\n"),
        ("/repo", "X-Method-Override: PUT, DELETE\r\n"),
        ("/repo?_method=DELETE", ""),
    ],
)
def test_an_overridden_method_is_judged(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, path: str, header: str
) -> None:
    proxy = start_proxy(policy_file(POLICY))
    answer = send_raw(proxy.port, post(plain_logging_upstream, path, header))
    proxy.flush()
    event = assert_refused(answer, plain_logging_upstream, tmp_path / "tape")
    assert (event["method"], event["decision"], event["rule"]) == ("POST", "BLOCK", "no-delete")


def test_an_override_to_an_allowed_method_passes(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """The control: only the overriding method's verdict is added; PATCH is allowed here."""
    proxy = start_proxy(policy_file(POLICY))
    answer = send_raw(proxy.port, post(plain_logging_upstream, "/repo", "X-HTTP-Method-Override: PATCH\r\n"))
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert b"X-HTTP-Method-Override: PATCH" in plain_logging_upstream.received_bytes()
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert event["decision"] == "ALLOW"
