"""Attack: a keyword-scoped secret split over two HTTP/2 request trailers, its rule's keyword in one
(`x-service: airtable`) and the token in the other. The blocking scan read trailers one by one while
the evidence reads them as one block: the request was forwarded and the tape recorded a BLOCK-action
hit beside an ALLOW. The token is gitleaks' own fixture for the rule (not written here)."""

from __future__ import annotations

from tests.helpers import network_events, read_tape
from tests.security.helpers import AIRTABLE_RULE, gitleaks_token, h2_post_with_trailers, tape_bytes
from tests.security.upstream import LoggingUpstream

POLICY = (
    "version: 1\nmode: enforce\ndefault: ALLOW\ndlp:\n  import_gitleaks: bundled\n  default_action: BLOCK\n"
)
TOKEN = gitleaks_token(AIRTABLE_RULE)


def test_a_secret_keyed_by_another_trailer_is_blocked(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    proxy = start_proxy(
        policy_file(POLICY), upstream_ca=logging_upstream.ca_path, sets=["connection_strategy=lazy"]
    )
    status = h2_post_with_trailers(proxy, logging_upstream, [("x-service", "airtable"), ("x-b", TOKEN)])
    proxy.flush()
    assert status == 403
    assert TOKEN.encode() not in logging_upstream.received_bytes()
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["outcome"]) == ("BLOCK", "BLOCKED")
    assert event["rule"] == f"dlp:{AIRTABLE_RULE}"
    assert TOKEN.encode() not in tape_bytes(tmp_path / "tape")
