"""Attack: get past a path rule by writing the path's slashes as %2F, %5C or a backslash (adversarial
review, finding 2).

failcore kept %2F encoded when matching, but werkzeug (Flask), uvicorn and Node's routers decode it
before routing: `/v1%2Fadmin%2Fdelete-all` ran the handler a `/v1/admin/` rule was written to stop.
The path is now judged as written and with those separators decoded (dot segments removed again), and
the stricter verdict wins. Each request is written byte for byte so no client normalises it first."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.helpers import assert_passed, assert_refused, send_plain
from tests.security.upstream import LoggingUpstream

POLICY = """
version: 1
mode: enforce
default: ALLOW
rules:
  - id: no-admin
    path: /v1/admin/
    action: BLOCK
  - id: no-secret
    path: /files/*/secret
    action: BLOCK
"""


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("/v1%2Fadmin%2Fdelete-all", "no-admin"),
        ("/v1/admin%2fdelete-all", "no-admin"),
        ("/v1/x/..%2Fadmin/delete-all", "no-admin"),
        ("/v1%5Cadmin%5Cdelete-all", "no-admin"),
        ("/v1\\admin\\delete-all", "no-admin"),
        ("/files/a%2Fsecret", "no-secret"),
    ],
)
def test_encoded_separators_do_not_escape_a_path_rule(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, path: str, rule: str
) -> None:
    answer = send_plain(start_proxy(policy_file(POLICY)), plain_logging_upstream, "GET", path)
    event = assert_refused(answer, plain_logging_upstream, tmp_path / "tape")
    assert (event["decision"], event["rule"]) == ("BLOCK", rule)


def test_an_encoded_slash_elsewhere_still_passes(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """The control: decoding is only for judging; a path no rule covers either way reaches upstream
    exactly as written."""
    proxy = start_proxy(policy_file(POLICY))
    answer = send_plain(proxy, plain_logging_upstream, "GET", "/files/a%2Fb/public")
    event = assert_passed(
        answer, plain_logging_upstream, tmp_path / "tape", b"GET /files/a%2Fb/public HTTP/1.1"
    )
    assert event["decision"] == "ALLOW"
