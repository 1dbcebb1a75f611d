"""Evidence attack on the DLP scan's memory of clean texts: warm the proxy up with requests whose
headers its evidence scan found clean (it then skips a header block, header names and a URL it saw
clean before), then send a secret in the very same header, or complete one with another header: a
token whose gitleaks rule is keyed by a word anywhere in the scanned text is clean on its own line and
a secret beside an `X-Service: airtable` header. Each must be masked on the tape every time.

Through the real proxy (observe mode: everything is forwarded, the tape must mask it)."""

from __future__ import annotations

import orjson

from tests.dlp_corpus import load_samples
from tests.helpers import network_events, proxied_client, read_tape
from tests.security.helpers import tape_bytes
from tests.security.upstream import LoggingUpstream

POLICY = """
version: 1
mode: observe
default: ALLOW
dlp:
  import_gitleaks: bundled
"""
# GitHub's documented classic personal access token shape (ghp_ + 36 characters).
TOKEN = "ghp_" + "8xQ2mZ7rT4vK9pL3nW6yB1cD5fG0hJ2sA4eU"


def test_a_secret_in_a_header_seen_clean_before_is_masked_on_the_tape(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    up = plain_logging_upstream
    # An airtable token from gitleaks' own fixtures (tests/data/conformance/dlp, MIT).
    airtable = next(
        s.secret
        for s in load_samples()
        if s.rule == "airtable-personnal-access-token" and s.kind == "tp" and s.secret
    )
    proxy = start_proxy(policy_file(POLICY))
    clean = {"X-Note": "hello", "X-B": airtable}
    with proxied_client(proxy) as client:
        for _ in range(4):
            assert client.post(f"{up.url}/v1/echo", headers=clean, content=b"{}").status_code == 200
        for _ in range(2):
            for headers in (
                {**clean, "X-Note": f"token {TOKEN}"},
                {"X-Service": "airtable", **clean},
                clean,
            ):
                assert client.post(f"{up.url}/v1/echo", headers=headers, content=b"{}").status_code == 200
    proxy.flush()
    assert up.received_bytes().count(TOKEN.encode()) == 2, "observe mode forwards it"
    events = network_events(read_tape(tmp_path / "tape"))
    assert len(events) == 10
    assert TOKEN.encode() not in tape_bytes(tmp_path / "tape")

    def header(event: dict, name: str) -> str:
        return next(value for key, value in event["request"]["headers"] if key.lower() == name)

    def rules(event: dict) -> set[str]:
        return {hit["rule"] for hit in (event.get("dlp") or {}).get("hits", [])}

    warm, tail = events[:4], events[4:]
    # Alone on its line the token is clean (today's semantics, kept): recorded as sent.
    assert all(header(e, "x-b") == airtable and not rules(e) for e in warm)
    for noted, keyed, again in (tail[0:3], tail[3:6]):
        assert header(noted, "x-note").startswith("[redacted ") and rules(noted) == {"github-pat"}
        assert header(keyed, "x-b").startswith("[redacted ")
        assert rules(keyed) == {"airtable-personnal-access-token"}
        assert airtable not in orjson.dumps(keyed).decode()
        assert header(again, "x-b") == airtable and not rules(again)
