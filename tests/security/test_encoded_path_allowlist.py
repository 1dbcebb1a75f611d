"""Regression: an allow-list policy refused GitLab-style encoded paths (review 2, finding 3).

Judging a path also with %2F decoded (test_path_separator_escapes) took the stricter of the two
verdicts; under `default: BLOCK` the decoded alias of `/api/v4/projects/mygroup%2Fmyproject/issues`
matched no rule and the default refused a request the allow rule was written for (GitLab's API names a
project `group%2Fname`). The alias now makes the verdict stricter through a rule it matches, or through
the default only when its dot segments climb out of the path as written (`/files/..%2Fadmin`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.helpers import assert_passed, assert_refused, send_plain
from tests.security.upstream import LoggingUpstream

POLICY = """
version: 1
mode: enforce
default: BLOCK
rules:
  - {id: gl-issues, method: GET, path: '/api/v4/projects/*/issues', action: ALLOW}
  - {id: files, path: /files/**, action: ALLOW}
"""


def test_an_encoded_project_path_is_allowed(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    path = "/api/v4/projects/mygroup%2Fmyproject/issues"
    answer = send_plain(start_proxy(policy_file(POLICY)), plain_logging_upstream, "GET", path)
    event = assert_passed(answer, plain_logging_upstream, tmp_path / "tape", f"GET {path} HTTP/1.1".encode())
    assert (event["decision"], event["rule"]) == ("ALLOW", "gl-issues")


@pytest.mark.parametrize("path", ["/files/..%2Fadmin", "/api/v4/projects/x%2F..%2F..%2Fadmin/issues"])
def test_an_encoded_climb_out_of_the_allowed_path_is_refused(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, path: str
) -> None:
    answer = send_plain(start_proxy(policy_file(POLICY)), plain_logging_upstream, "GET", path)
    event = assert_refused(answer, plain_logging_upstream, tmp_path / "tape")
    assert (event["decision"], event["rule"]) == ("BLOCK", None)
