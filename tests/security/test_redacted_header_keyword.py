"""Attack: a keyword-scoped gitleaks token whose keyword is only in the name of a policy
`redact_headers` header ending in "authorization" (`X-Airtable-Authorization: Bearer abc`, the token in
`X-B`).

The tape records that header as `Bearer [redacted …]`, which stays in the evidence's header block (it
is not one fingerprint), so the evidence scan read the keyword and recorded a BLOCK hit; the blocking
scan dropped every `redact_headers` header from its block and forwarded the token. Through the real
proxy: nothing reaches the logging upstream, and the tape holds the BLOCK and not the token.

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
redact_headers: [x-airtable-authorization]
dlp:
  import_gitleaks: bundled
  rule_actions: {{{RULE}: BLOCK}}
"""


def test_a_keyword_in_a_redacted_authorization_name_blocks_as_it_is_recorded(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    up = plain_logging_upstream
    token = gitleaks_token(RULE)
    proxy = start_proxy(policy_file(POLICY))
    keyed = [("X-Airtable-Authorization", "Bearer abc"), ("X-B", token)]
    events = keyword_scoped_pair(proxy, up, tmp_path / "tape", [("X-B", token)], keyed, "/v1/split")
    event = events["/v1/split"]
    assert [(h["rule"], h["action"]) for h in event["dlp"]["hits"]] == [(RULE, "BLOCK")]
    recorded = dict(event["request"]["headers"])
    assert recorded["X-Airtable-Authorization"].startswith("Bearer [redacted ")
    assert recorded["X-B"].startswith("[redacted ")
    assert tape_bytes(tmp_path / "tape").count(token.encode()) == 1, "only the allowed request's, as sent"
