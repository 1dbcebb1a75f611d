"""Attack: a keyword-scoped gitleaks token sent as a header NAME, its keyword in another header's value
(`X-Svc: airtable` and `<token>: 1`).

The blocking scan of the header block kept only hits inside a value, and its scan of the names alone
has no keyword: nothing blocked, the token went out. The evidence scan masked the name but recorded
no hit (the tape said ALLOW, no DLP). Through the real proxy: nothing reaches the logging upstream, the
tape records the BLOCK with the hit at the header's name, and never the token.

The token is gitleaks' own fixture (tests/data/conformance/dlp, MIT), the rule gitleaks' own (bundled)."""

from __future__ import annotations

from pathlib import Path

from tests.security.helpers import AIRTABLE_RULE, gitleaks_token, keyword_scoped_pair, tape_bytes
from tests.security.upstream import LoggingUpstream

RULE = AIRTABLE_RULE
POLICY = f"""
version: 1
mode: enforce
default: ALLOW
dlp:
  import_gitleaks: bundled
  rule_actions: {{{RULE}: BLOCK}}
"""


def test_a_keyword_scoped_token_as_a_header_name_is_blocked_and_recorded(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    up = plain_logging_upstream
    token = gitleaks_token(RULE)
    proxy = start_proxy(policy_file(POLICY))
    keyed = [("X-Svc", "airtable"), (token, "1")]
    events = keyword_scoped_pair(proxy, up, tmp_path / "tape", [(token, "1")], keyed, "/v1/name")
    event = events["/v1/name"]
    hits = [(h["rule"], h["action"], h["location"]) for h in event["dlp"]["hits"]]
    assert hits == [(RULE, "BLOCK", "request.header-name")]
    assert token.encode() not in b"".join(n.encode() for n, _ in event["request"]["headers"])
    assert not events["/v1/alone"].get("dlp")
    # The allowed request's name is the token itself, recorded as sent (no keyword: not a secret).
    assert tape_bytes(tmp_path / "tape").count(token.lower().encode()) <= 1
