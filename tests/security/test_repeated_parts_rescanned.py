"""Held attack: warm the proxy up with clean requests (the blocking DLP scan then skips the URL, header
values and header names it found clean before), then send a secret in the very same places, again and
again. Every one is refused; none reaches the upstream; the tape names the DLP rule each time."""

from __future__ import annotations

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.upstream import LoggingUpstream

POLICY = """
version: 1
mode: enforce
default: ALLOW
dlp:
  severity_actions: {critical: BLOCK, high: BLOCK}
"""
# GitHub's documented classic personal access token shape (ghp_ + 36 characters).
TOKEN = "ghp_" + "8xQ2mZ7rT4vK9pL3nW6yB1cD5fG0hJ2sA4eU"


def test_a_secret_in_a_part_seen_clean_before_is_still_refused(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    up = plain_logging_upstream
    proxy = start_proxy(policy_file(POLICY))
    clean_headers = {"X-Note": "hello", "Cookie": "theme=dark"}
    with proxied_client(proxy) as client:
        for _ in range(3):
            assert (
                client.post(f"{up.url}/v1/echo?q=hi", headers=clean_headers, content=b"{}").status_code == 200
            )
        refused = []
        for _ in range(2):
            for headers, url in [
                ({**clean_headers, "X-Note": f"token {TOKEN}"}, f"{up.url}/v1/echo?q=hi"),
                ({**clean_headers, "Cookie": f"theme=dark; gh={TOKEN}"}, f"{up.url}/v1/echo?q=hi"),
                (clean_headers, f"{up.url}/v1/echo?q={TOKEN}"),
            ]:
                refused.append(client.post(url, headers=headers, content=b"{}").status_code)
    proxy.flush()
    assert refused == [403] * 6
    seen = up.received_bytes()
    assert seen.lower().count(b"x-note: hello") == 3
    assert TOKEN.encode() not in seen
    events = network_events(read_tape(tmp_path / "tape"))
    blocked = [e for e in events if e["decision"] == "BLOCK"]
    assert len(blocked) == 6 and {e["rule"] for e in blocked} == {"dlp:github-pat"}
