"""Which secrets in headers decide a request: names, and secrets foreign to a credential header."""

from __future__ import annotations

import pytest

from failcore.dlp import DlpEngine, builtin_rules
from failcore.evidence.dlp import foreign_credential_hits, header_name_hits

AWS_KEY_ID = "AKIA" + "QWERTYUIOPASDFGH"
GITHUB_PAT = "ghp_" + "Z9y8X7w6V5u4" * 3
JWT = (
    "eyJ"
    + "hbGciOiJIUzI1NiJ9"
    + ".eyJ"
    + "zdWIiOiIxMjM0NTY3ODkwIn0"
    + "."
    + "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)


@pytest.fixture(scope="module")
def engine() -> DlpEngine:
    return DlpEngine(builtin_rules(), backend="python", salt=b"s")


def rules(hits) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(h.rule_id for h in hits)


@pytest.mark.parametrize(
    "name, value",
    [
        ("Authorization", f"Bearer {GITHUB_PAT}"),
        ("Authorization", f"Bearer {JWT}"),
        # AWS Signature V4: the key id sits inside the header's parameters, as AWS documents it.
        (
            "Authorization",
            f"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/20260101/us-east-1/s3/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=" + "fe5f80f77d5fa3beca038a248ff027d0" * 2,
        ),
        ("X-Api-Key", f" {GITHUB_PAT} "),
        ("Cookie", f"theme=dark; session={JWT}"),
    ],
)
def test_a_credential_in_its_own_header_is_not_foreign(engine, name: str, value: str) -> None:
    assert engine.scan(value.encode()), "the value does hold a secret-shaped token"
    assert foreign_credential_hits(engine, [(name, value)]) == []


@pytest.mark.parametrize(
    "name, value",
    [
        ("Cookie", f"session=abc; aws={AWS_KEY_ID}"),
        ("Cookie", f"token={GITHUB_PAT}"),
        ("Authorization", f"Bearer abc123 {AWS_KEY_ID}"),
        ("X-Api-Key", f"k-{GITHUB_PAT}"),
        ("X-Auth-Token", f"prefix {AWS_KEY_ID}"),
    ],
)
def test_a_secret_smuggled_in_a_credential_header_is_foreign(engine, name: str, value: str) -> None:
    assert rules(foreign_credential_hits(engine, [(name, value)])) in (["aws-access-key-id"], ["github-pat"])


def test_header_names_are_scanned_in_either_case(engine) -> None:
    assert rules(header_name_hits(engine, [f"X-{AWS_KEY_ID}"])) == ["aws-access-key-id"]
    assert rules(header_name_hits(engine, [f"x-{AWS_KEY_ID.lower()}"])) == ["aws-access-key-id"]
    assert header_name_hits(engine, ["Content-Type", "X-Request-Id"]) == []
