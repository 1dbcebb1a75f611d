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

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.helpers import AIRTABLE_RULE, gitleaks_token, tape_bytes
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
    with proxied_client(proxy) as client:
        alone = client.post(f"{up.url}/v1/alone", headers=[("X-B", token)], content=b"{}")
        split = client.post(
            f"{up.url}/v1/split",
            headers=[("X-Airtable-Authorization", "Bearer abc"), ("X-B", token)],
            content=b"{}",
        )
    proxy.flush()
    assert alone.status_code == 200, "without its keyword the token is not one (gitleaks' rule)"
    assert split.status_code == 403
    seen = up.received_bytes()
    assert b"/v1/alone" in seen and b"/v1/split" not in seen
    events = {e["path"]: e for e in network_events(read_tape(tmp_path / "tape"))}
    event = events["/v1/split"]
    assert (event["decision"], event["outcome"], event["rule"]) == ("BLOCK", "BLOCKED", f"dlp:{RULE}")
    assert [(h["rule"], h["action"]) for h in event["dlp"]["hits"]] == [(RULE, "BLOCK")]
    recorded = dict(event["request"]["headers"])
    assert recorded["X-Airtable-Authorization"].startswith("Bearer [redacted ")
    assert recorded["X-B"].startswith("[redacted ")
    assert tape_bytes(tmp_path / "tape").count(token.encode()) == 1, "only the allowed request's, as sent"
