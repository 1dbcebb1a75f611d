"""Attack: get past a path rule with `;` path parameters (adversarial review 2, finding 1).

Tomcat, Jetty and Spring drop every segment's `;…` before resolving dot segments and routing: the
reviewer's embedded Tomcat 9.0.70 ran its /admin servlet for `/public/..;/admin/users` (through an
allow-list admitting only `/public/`) and for `/admin;x=1/users` and `/x/..;/admin/users` (past a
`/admin/**` BLOCK rule), while failcore judged the paths as written and let them through. The path is
now also judged with its parameters dropped, the same way as with `%2F` decoded
(test_path_separator_escapes, test_encoded_path_allowlist): the stricter verdict wins, through a rule
that reading matches or, when its dot segments climb out of the path as written, the default. A `%3B`
is read as `;` there (review 3: a proxy decoding the path first hands Tomcat a `;`). A `;`
in a path an allow rule is written for (`jsessionid`, matrix parameters) stays allowed. Each request is
written byte for byte so no client normalises it first."""

from __future__ import annotations

from collections.abc import Callable
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
"""

ALLOW_LIST = """
version: 1
mode: enforce
default: BLOCK
rules:
  - {id: pub, path: /public/, action: ALLOW}
  - {id: items, path: /items, action: ALLOW}
  - {id: login, path: '/app/login;jsessionid=*', action: ALLOW}
  - {id: cars, path: '/cars/**', action: ALLOW}
"""


@pytest.fixture
def ask(start_proxy, policy_file, plain_logging_upstream: LoggingUpstream) -> Callable[[str, str], bytes]:
    """GET `path` (written byte for byte) through a proxy under `policy`: the head of its answer."""

    def ask(policy: str, path: str) -> bytes:
        return send_plain(start_proxy(policy_file(policy)), plain_logging_upstream, "GET", path)

    return ask


@pytest.mark.parametrize(
    ("policy", "path", "rule"),
    [
        (BLOCK_ADMIN, "/admin;x=1/users", "no-admin"),
        (BLOCK_ADMIN, "/x/..;/admin/users", "no-admin"),
        (BLOCK_ADMIN, "/admin;/users", "no-admin"),
        (BLOCK_ADMIN, "/x;a=%2F/..;/admin/users", "no-admin"),
        (ALLOW_LIST, "/public/..;/admin/users", None),
        (ALLOW_LIST, "/public/%2e%2e;/admin/users", None),
        (ALLOW_LIST, "/public/a;b=c/..;x/..;/admin/users", None),
        (ALLOW_LIST, "/items/..;/admin/users", None),
        # Review 3: `%3B`, which a proxy that decodes the path (nginx `proxy_pass` with a URI) hands
        # to Tomcat as `;`.
        (BLOCK_ADMIN, "/x/..%3B/admin/users", "no-admin"),
        (BLOCK_ADMIN, "/admin%3Bx/users", "no-admin"),
        (BLOCK_ADMIN, "/admin%3bx=1/users", "no-admin"),
        (BLOCK_ADMIN, "/x/%2e%2e%3b/admin/users", "no-admin"),
        (ALLOW_LIST, "/public/..%3B/admin", None),
        (ALLOW_LIST, "/public/..%3b/admin/users", None),
    ],
)
def test_path_parameters_do_not_escape_a_path_rule(
    ask, plain_logging_upstream: LoggingUpstream, tmp_path: Path, policy: str, path: str, rule: str | None
) -> None:
    event = assert_refused(ask(policy, path), plain_logging_upstream, tmp_path / "tape")
    assert (event["decision"], event["rule"]) == ("BLOCK", rule)


@pytest.mark.parametrize(
    ("policy", "path", "rule"),
    [
        (ALLOW_LIST, "/items;jsessionid=0A1B2C3D4E5F", "items"),
        (ALLOW_LIST, "/items/42;jsessionid=0A1B2C3D4E5F", "items"),
        (ALLOW_LIST, "/app/login;jsessionid=0A1B2C3D4E5F", "login"),
        (ALLOW_LIST, "/cars/red;year=2024/list", "cars"),
        (ALLOW_LIST, "/public/a;v=1/b", "pub"),
        (BLOCK_ADMIN, "/reports;format=csv/admin", None),
        (ALLOW_LIST, "/cars/red%3Byear=2024/list", "cars"),
        (BLOCK_ADMIN, "/reports%3Bformat=csv/admin", None),
    ],
)
def test_a_legitimate_path_parameter_still_passes(
    ask, plain_logging_upstream: LoggingUpstream, tmp_path: Path, policy: str, path: str, rule: str | None
) -> None:
    """The control: dropping parameters is only for judging; a path its allow rule (or no rule) covers
    either way reaches upstream exactly as written."""
    line = f"GET {path} HTTP/1.1".encode()
    event = assert_passed(ask(policy, path), plain_logging_upstream, tmp_path / "tape", line)
    assert (event["decision"], event["rule"]) == ("ALLOW", rule)
