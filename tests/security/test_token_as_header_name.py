"""Attack: a keyword-scoped gitleaks token sent as a header NAME, its keyword in another header's value
(`X-Svc: airtable` and `<token>: 1`).

The blocking scan of the header block kept only hits inside a value, and its scan of the names alone
has no keyword: nothing blocked, the token went out. The evidence scan masked the name but recorded
no hit (the tape said ALLOW, no DLP). Through the real proxy: nothing reaches the logging upstream, the
tape records the BLOCK with the hit at the header's name, and never the token.

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
    with proxied_client(proxy) as client:
        alone = client.post(f"{up.url}/v1/alone", headers=[(token, "1")], content=b"{}")
        named = client.post(f"{up.url}/v1/name", headers=[("X-Svc", "airtable"), (token, "1")], content=b"{}")
    proxy.flush()
    assert alone.status_code == 200, "without its keyword the token is not one (gitleaks' rule)"
    assert named.status_code == 403
    seen = up.received_bytes()
    assert b"/v1/alone" in seen and b"/v1/name" not in seen
    events = {e["path"]: e for e in network_events(read_tape(tmp_path / "tape"))}
    event = events["/v1/name"]
    assert (event["decision"], event["outcome"], event["rule"]) == ("BLOCK", "BLOCKED", f"dlp:{RULE}")
    hits = [(h["rule"], h["action"], h["location"]) for h in event["dlp"]["hits"]]
    assert hits == [(RULE, "BLOCK", "request.header-name")]
    assert token.encode() not in b"".join(n.encode() for n, _ in event["request"]["headers"])
    assert not events["/v1/alone"].get("dlp")
    # The allowed request's name is the token itself, recorded as sent (no keyword: not a secret).
    assert tape_bytes(tmp_path / "tape").count(token.lower().encode()) <= 1
