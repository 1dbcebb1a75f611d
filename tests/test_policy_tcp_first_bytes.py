"""Pure parts of judging raw TCP by its first bytes (`looks_like_http`, `tcp_verdicts`) and of judging a
path with %2F decoded (`decide`). The expected values come from RFC 9112 (request line: method token,
SP; servers skip leading empty lines) and RFC 9110 (tchar), not from the code."""

from __future__ import annotations

import pytest

from failcore.policy.decide import decide, looks_like_http, tcp_verdicts
from failcore.policy.load import parse_policy


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"GET / HTTP/1.1\r\n", True),
        (b"\r\nPOST /admin HTTP/1.1\r\n", True),
        (b"\n\n \x00\tDELETE /x HTTP/1.1", True),
        (b"post /x HTTP/1.1", True),  # servers that accept any token run it
        (b"M-SEARCH * HTTP/1.1", True),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", True),
        (b"SSH-2.0-OpenSSH_9.6\r\n", False),
        (b"\x16\x03\x01\x02\x00", False),  # a TLS record
        (b"\x00\x01raw", False),
        (b"PING\r\n", False),
        (b" /x HTTP/1.1", False),  # no method token
        (b"", None),
        (b"\r\n\r\n\x00 ", None),
        (b"\r\nPOS", None),  # the token has not ended yet
    ],
)
def test_looks_like_http(data: bytes, expected: bool | None) -> None:
    assert looks_like_http(data) is expected


def test_tcp_verdicts_are_plain_and_strict() -> None:
    policy = parse_policy(
        "version: 1\nmode: enforce\ndefault: ALLOW\n"
        "rules:\n  - {id: no-admin, path: /admin/**, action: BLOCK}\n"
        "budgets:\n  - {id: openai, window: day, scope: {provider: openai}, limits: {cost_usd: 5}}\n"
    )
    plain, strict = tcp_verdicts(policy, host="127.0.0.1", port=22)
    assert (plain.decision, plain.rule) == ("ALLOW", None)
    assert (strict.decision, strict.rule) == ("BLOCK", "no-admin")
    with_tcp_rule = parse_policy(
        "version: 1\nmode: enforce\nrules:\n  - {id: raw, scheme: tcp, action: ALLOW}\n"
        "  - {id: no-admin, path: /admin/**, action: BLOCK}\n"
    )
    plain, strict = tcp_verdicts(with_tcp_rule, host="127.0.0.1", port=22)
    assert plain is strict and plain.rule == "raw"


ALLOWLIST = """
version: 1
mode: enforce
default: BLOCK
rules:
  - {id: gl-issues, method: GET, path: '/api/v4/projects/*/issues', action: ALLOW}
  - {id: no-secret, path: /api/v4/projects/*/secret/**, action: BLOCK}
  - {id: files, path: /files/**, action: ALLOW}
"""


@pytest.mark.parametrize(
    ("path", "decision", "rule"),
    [
        ("/api/v4/projects/1234/issues", "ALLOW", "gl-issues"),
        ("/api/v4/projects/mygroup%2Fmyproject/issues", "ALLOW", "gl-issues"),  # GitLab's own encoding
        ("/api/v4/projects/mygroup%2fmyproject/issues", "ALLOW", "gl-issues"),
        # The alias climbs out of what the written path names: the default still counts.
        ("/files/..%2Fadmin", "BLOCK", None),
        ("/api/v4/projects/x%2F..%2F..%2Fadmin/issues", "BLOCK", None),
        # A rule the alias matches still counts.
        ("/files/a%2F..%2F..%2Fapi%2Fv4%2Fprojects%2F1%2Fsecret%2Fk", "BLOCK", "no-secret"),
    ],
)
def test_an_encoded_slash_is_stricter_only_through_a_rule_or_a_climb(
    path: str, decision: str, rule: str
) -> None:
    verdict = decide(
        parse_policy(ALLOWLIST), host="gitlab.example", port=443, scheme="https", method="GET", path=path
    )
    assert (verdict.decision, verdict.rule) == (decision, rule)
