"""Attack: get past a path rule by changing the path's case (adversarial review 4, finding 5).

Express (its router's default `caseSensitive: false`; checked by hand with express 4: `/ADMIN/x` ran
the `/admin/x` route), ASP.NET Core, Fiber and IIS route paths regardless of case, so `/ADMIN/users`
runs what a `/admin/**` BLOCK rule was written to stop; failcore judged the path as written and let it
through. The path (and each reading of it with `%2F` decoded or `;` parameters dropped) is now also
judged case-folded: the stricter verdict wins, through a rule the folded reading matches — never
looser: an allow rule matched only case-folded does not admit what the default refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.helpers import assert_passed, assert_refused, send_plain
from tests.security.upstream import LoggingUpstream

BLOCK_ADMIN = """
version: 1
mode: enforce
default: ALLOW
rules:
  - {id: no-admin, path: '/admin/**', action: BLOCK}
  - {id: no-billing, path: /Billing/export, action: BLOCK}
"""

ALLOW_LIST = """
version: 1
mode: enforce
default: BLOCK
rules:
  - {id: no-admin, path: '/api/admin/**', action: BLOCK}
  - {id: api, path: '/api/**', action: ALLOW}
"""


@pytest.mark.parametrize(
    ("policy", "path", "rule"),
    [
        (BLOCK_ADMIN, "/ADMIN/users", "no-admin"),
        (BLOCK_ADMIN, "/Admin/users", "no-admin"),
        (BLOCK_ADMIN, "/aDmIn/users/42", "no-admin"),
        (BLOCK_ADMIN, "/billing/export", "no-billing"),  # a cased literal prefix, a lower-case request
        (BLOCK_ADMIN, "/BILLING/EXPORT?all=1", "no-billing"),
        (BLOCK_ADMIN, "/x/..;/ADMIN/users", "no-admin"),  # with parameters dropped, then folded
        (BLOCK_ADMIN, "/ADMIN;/users", "no-admin"),
        (BLOCK_ADMIN, "/x/..%2FAdmin/users", "no-admin"),  # with %2F decoded, then folded
        (ALLOW_LIST, "/api/ADMIN/users", "no-admin"),  # an allow-list's BLOCK rule ahead of its ALLOW
        (ALLOW_LIST, "/API/admin/users", None),  # the default refuses it as written already
    ],
)
def test_path_case_does_not_escape_a_path_rule(
    start_proxy,
    policy_file,
    plain_logging_upstream: LoggingUpstream,
    tmp_path: Path,
    policy: str,
    path: str,
    rule: str | None,
) -> None:
    answer = send_plain(start_proxy(policy_file(policy)), plain_logging_upstream, "GET", path)
    event = assert_refused(answer, plain_logging_upstream, tmp_path / "tape")
    assert (event["decision"], event["rule"]) == ("BLOCK", rule)


@pytest.mark.parametrize(
    ("policy", "path", "decision", "rule"),
    [
        (BLOCK_ADMIN, "/Administrators-guide", "ALLOW", None),  # a path the rule does not cover
        (BLOCK_ADMIN, "/docs/ADMIN", "ALLOW", None),
        (ALLOW_LIST, "/api/Items/AbC123", "ALLOW", "api"),  # case in an allowed path is fine
    ],
)
def test_a_path_with_capitals_the_rules_allow_still_passes(
    start_proxy,
    policy_file,
    plain_logging_upstream: LoggingUpstream,
    tmp_path: Path,
    policy: str,
    path: str,
    decision: str,
    rule: str | None,
) -> None:
    """The control: folding is only for judging; the request reaches upstream exactly as written."""
    answer = send_plain(start_proxy(policy_file(policy)), plain_logging_upstream, "GET", path)
    line = f"GET {path} HTTP/1.1".encode()
    event = assert_passed(answer, plain_logging_upstream, tmp_path / "tape", line)
    assert (event["decision"], event["rule"]) == (decision, rule)


def test_an_allow_rule_matched_only_folded_does_not_admit(
    start_proxy,
    policy_file,
    plain_logging_upstream: LoggingUpstream,
    tmp_path: Path,
) -> None:
    """Never looser: `/API/x` under an allow-list of `/api/**` is refused by the default as before
    (a case-sensitive server would not run /api's handler for it either)."""
    answer = send_plain(start_proxy(policy_file(ALLOW_LIST)), plain_logging_upstream, "GET", "/API/items")
    event = assert_refused(answer, plain_logging_upstream, tmp_path / "tape")
    assert (event["decision"], event["rule"]) == ("BLOCK", None)
