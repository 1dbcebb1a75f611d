"""Header-split attack on the blocking DLP scan: a gitleaks rule keyed by a word anywhere in the text
scanned (`airtable` for an airtable token) finds a token only next to its keyword. The evidence scan
reads a request's headers as one block, so a keyword in one header (its value, its name, the Host
header) and the token in another is a hit on the tape; the blocking scan, which read each header on
its own, found nothing and forwarded the request. In enforce mode each must be blocked before anything
leaves: nothing reaches the upstream, and the tape records the BLOCK with the same rule it masked.

Tokens are gitleaks' own fixtures (tests/data/conformance/dlp, MIT), rules gitleaks' own (bundled)."""

from __future__ import annotations

import pytest

from tests.dlp_corpus import load_samples
from tests.helpers import network_events, proxied_client, read_tape
from tests.security.helpers import send_raw, tape_bytes
from tests.security.upstream import LoggingUpstream

RULE = "airtable-personnal-access-token"
POLICY = f"""
version: 1
mode: {{mode}}
default: ALLOW
dlp:
  import_gitleaks: bundled
  rule_actions: {{{{{RULE}: BLOCK}}}}
"""


def _token() -> str:
    return next(s.secret for s in load_samples() if s.rule == RULE and s.kind == "tp" and s.secret)


def _rules(event: dict) -> set[tuple[str, str]]:
    return {(hit["rule"], hit["action"]) for hit in (event.get("dlp") or {}).get("hits", [])}


SPLITS = {
    "keyword in another header's value": [("X-Service", "airtable"), ("X-B", "{token}")],
    "keyword in another header's name": [("X-Airtable-Base", "appQ1"), ("X-B", "{token}")],
    "keyword after the token": [("X-B", "{token}"), ("X-Vendor", "airtable.com")],
    "keyword in the Host header": [("Host", "airtable.{host}"), ("X-B", "{token}")],
}


@pytest.mark.parametrize("split", SPLITS)
def test_a_token_split_from_its_keyword_across_headers_is_blocked(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path, split: str
) -> None:
    up = plain_logging_upstream
    token = _token()
    proxy = start_proxy(policy_file(POLICY.format(mode="enforce")))
    host = up.url.split("://", 1)[1]
    headers = [(name, value.format(token=token, host=host)) for name, value in SPLITS[split]]
    with proxied_client(proxy) as client:
        clean = client.post(f"{up.url}/v1/clean", headers=[("X-B", token)], content=b"{}")
        blocked = client.post(f"{up.url}/v1/split", headers=headers, content=b"split-marker")
    proxy.flush()
    # Alone on its line the token matches nothing (gitleaks' semantics, kept): forwarded.
    assert clean.status_code == 200
    assert blocked.status_code == 403
    seen = up.received_bytes()
    assert b"/v1/clean" in seen
    assert b"split-marker" not in seen and b"/v1/split" not in seen
    assert seen.count(token.encode()) == 1
    events = network_events(read_tape(tmp_path / "tape"))
    by_path = {e["path"]: e for e in events}
    assert by_path["/v1/clean"]["decision"] == "ALLOW" and not _rules(by_path["/v1/clean"])
    event = by_path["/v1/split"]
    assert (event["decision"], event["outcome"], event["rule"]) == ("BLOCK", "BLOCKED", f"dlp:{RULE}")
    assert _rules(event) == {(RULE, "BLOCK")}
    assert tape_bytes(tmp_path / "tape").count(token.encode()) == 1  # the clean request's, as sent


def test_in_observe_mode_the_split_is_recorded_as_would_block(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    up = plain_logging_upstream
    token = _token()
    proxy = start_proxy(policy_file(POLICY.format(mode="observe")))
    with proxied_client(proxy) as client:
        sent = client.post(
            f"{up.url}/v1/split", headers=[("X-Service", "airtable"), ("X-B", token)], content=b"{}"
        )
    proxy.flush()
    assert sent.status_code == 200, "observe mode forwards it"
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["would_block"], event["rule"]) == ("WARN", True, f"dlp:{RULE}")
    assert _rules(event) == {(RULE, "BLOCK")}
    assert token.encode() not in tape_bytes(tmp_path / "tape")


def test_a_header_that_is_not_utf8_does_not_open_the_blocking_scan(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """A byte that is not UTF-8 in one header (mitmproxy keeps it as a surrogate) must not make the
    blocking scan fail, letting a keyed token in another header through (fail-open)."""
    up = plain_logging_upstream
    token = _token()
    proxy = start_proxy(policy_file(POLICY.format(mode="enforce")))
    host = up.url.split("://", 1)[1]
    request = (
        f"POST {up.url}/v1/split HTTP/1.1\r\nHost: {host}\r\nX-Service: airtable\r\n".encode()
        + b"X-Junk: caf\xe9\r\n"
        + f"X-B: {token}\r\nContent-Length: 12\r\nConnection: close\r\n\r\nsplit-marker".encode()
    )
    head = send_raw(proxy.port, request)
    proxy.flush()
    assert head.startswith(b"HTTP/1.1 403"), head[:200]
    seen = up.received_bytes()
    assert b"split-marker" not in seen and token.encode() not in seen
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("BLOCK", f"dlp:{RULE}")
    assert token.encode() not in tape_bytes(tmp_path / "tape")


def test_a_keyword_in_the_host_connected_to_with_a_token_in_the_path_is_blocked(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """The tape records a request's URL with the host the proxy connects to; the blocking scan read it
    with the Host header's (mitmproxy's pretty_url). A Host header that names another host hid the
    keyword in the host connected to from the blocking scan, while the tape recorded the token beside
    it as a hit. (Through an upstream proxy, the logging upstream, so no name needs to resolve.)"""
    up = plain_logging_upstream
    token = _token()
    proxy = start_proxy(policy_file(POLICY.format(mode="enforce")), sets=[f"mode=upstream:{up.url}"])
    with proxied_client(proxy) as client:
        blocked = client.get(
            f"http://api.airtable.example/v0/bases/{token}", headers={"Host": "api.example.com"}
        )
    proxy.flush()
    assert blocked.status_code == 403
    assert token.encode() not in up.received_bytes()
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("BLOCK", f"dlp:{RULE}")
    assert _rules(event) == {(RULE, "BLOCK")}
    assert token.encode() not in tape_bytes(tmp_path / "tape")


def test_a_private_key_split_over_several_headers_is_blocked_and_masked(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """A key's lines, one per header: the header block matches gitleaks' private-key rule across
    lines, a match that was no one header's, so the evidence scan neither recorded nor masked it (the
    key reached the tape in clear) and the blocking scan forwarded it. Each header it covers is its."""
    up = plain_logging_upstream
    sample = next(s for s in load_samples() if s.rule == "private-key" and s.kind == "tp" and "\n" in s.text)
    lines = [line for line in sample.text.splitlines() if line.strip()]
    assert len(lines) >= 3
    policy = (
        "version: 1\nmode: enforce\ndlp:\n  import_gitleaks: bundled\n  rule_actions: {private-key: BLOCK}\n"
    )
    proxy = start_proxy(policy_file(policy))
    headers = [(f"X-Part-{n}", line) for n, line in enumerate(lines)]
    with proxied_client(proxy) as client:
        blocked = client.post(f"{up.url}/v1/split", headers=headers, content=b"split-marker")
    proxy.flush()
    assert blocked.status_code == 403
    seen = up.received_bytes()
    assert b"split-marker" not in seen and not any(line.encode() in seen for line in lines[1:-1])
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("BLOCK", "dlp:private-key")
    on_disk = tape_bytes(tmp_path / "tape")
    assert not [line for line in lines[1:-1] if line.encode() in on_disk]
