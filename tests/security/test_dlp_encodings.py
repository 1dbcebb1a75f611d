"""A DLP BLOCK is not sidestepped by encoding the secret the way its reader decodes it.

One test per evasion (issue 9 item 2, issue 8 section 3, issue 9 item 12), each through the real proxy
against a logging upstream: the secret never reaches the upstream in any spelling, the request is
answered 403 and recorded BLOCK, and the tape holds neither the secret nor its encoded form.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from urllib.parse import quote

import httpx

from failcore.shipped import BUNDLED_GITLEAKS
from tests.helpers import network_events, proxied_client, read_tape
from tests.security.upstream import LoggingUpstream

BLOCK_CRITICAL = """
version: 1
mode: enforce
default: ALLOW
dlp:
  severity_actions: {critical: BLOCK}
"""
EXAMPLE_DLP_POLICY = Path(__file__).resolve().parents[2] / "policies" / "examples" / "dlp.yaml"
GITLEAKS_TOML = BUNDLED_GITLEAKS


def _github_pat(seed: int) -> str:
    rng = random.Random(seed)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "gh" + "p_" + "".join(rng.choice(alphabet) for _ in range(36))


def _percent_all(text: str) -> str:
    return "".join(f"%{byte:02X}" for byte in text.encode())


def _tape_bytes(tape: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(tape.glob("seg-*.jsonl")))


def _assert_blocked(
    response: httpx.Response, up: LoggingUpstream, tape: Path, forms: list[str], rule: str = "dlp:github-pat"
) -> None:
    assert response.status_code == 403, response.text
    seen = up.received_bytes()
    raw_tape = _tape_bytes(tape)
    for form in forms:
        assert form.encode() not in seen, f"{form[:12]}… reached the upstream"
        assert form.encode() not in raw_tape, f"{form[:12]}… is on the tape in clear"
    [event] = [e for e in network_events(read_tape(tape)) if e["decision"] == "BLOCK"]
    assert event["rule"] == rule
    assert any(hit["action"] == "BLOCK" for hit in event["dlp"]["hits"])


def _allowed_first(client: httpx.Client, up: LoggingUpstream) -> None:
    """A clean request goes through first, so the upstream is proven reachable."""
    assert client.post(f"{up.url}/clean", content=b"nothing to see").status_code == 200
    assert b"nothing to see" in up.received_bytes()


def test_json_unicode_escaped_top_level_string(start_proxy, policy_file, logging_upstream, tmp_path) -> None:
    secret = _github_pat(1)
    escaped = "".join(f"\\u{ord(c):04x}" for c in secret[:6]) + secret[6:]
    body = f'"{escaped}"'.encode()
    assert json.loads(body) == secret
    proxy = start_proxy(policy_file(BLOCK_CRITICAL), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        _allowed_first(client, logging_upstream)
        response = client.post(
            f"{logging_upstream.url}/v1/notes", content=body, headers={"content-type": "application/json"}
        )
    proxy.flush()
    _assert_blocked(response, logging_upstream, tmp_path / "tape", [secret, secret[6:]])


def test_json_escaped_secret_in_a_chat_request(start_proxy, policy_file, logging_upstream, tmp_path) -> None:
    # The user pastes a JSON config into the chat: in the request body its quotes become \" escapes,
    # where gitleaks' patterns (written for a quote or a space around the secret) do not look.
    rng = random.Random(2)
    secret = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(32))
    content = f'Why does search fail? My config:\n{{"algolia_api_key": "{secret}", "index": "docs"}}'
    payload = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}
    policy = policy_file(
        BLOCK_CRITICAL + f"  import_gitleaks: {GITLEAKS_TOML}\n  rule_actions: {{algolia-api-key: BLOCK}}\n"
    )
    proxy = start_proxy(policy, upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        _allowed_first(client, logging_upstream)
        response = client.post(f"{logging_upstream.url}/v1/chat/completions", json=payload)
    proxy.flush()
    _assert_blocked(response, logging_upstream, tmp_path / "tape", [secret], rule="dlp:algolia-api-key")


def test_percent_encoded_form_value(start_proxy, policy_file, logging_upstream, tmp_path) -> None:
    secret = _github_pat(3)
    encoded = _percent_all(secret)
    proxy = start_proxy(policy_file(BLOCK_CRITICAL), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        _allowed_first(client, logging_upstream)
        response = client.post(
            f"{logging_upstream.url}/login",
            content=f"user=bob&token={encoded}".encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    proxy.flush()
    _assert_blocked(response, logging_upstream, tmp_path / "tape", [secret, encoded])


def test_percent_encoded_path(start_proxy, policy_file, logging_upstream, tmp_path) -> None:
    secret = _github_pat(4)
    encoded = _percent_all(secret[:8]) + secret[8:]
    proxy = start_proxy(policy_file(BLOCK_CRITICAL), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        _allowed_first(client, logging_upstream)
        response = client.get(httpx.URL(f"{logging_upstream.url}/repos/{encoded}/contents"))
    proxy.flush()
    _assert_blocked(response, logging_upstream, tmp_path / "tape", [secret, secret[8:]])


def test_base64_token_in_path(start_proxy, policy_file, logging_upstream, tmp_path) -> None:
    secret = _github_pat(5)
    wrapped = base64.urlsafe_b64encode(f"token:{secret}".encode()).decode().rstrip("=")
    proxy = start_proxy(policy_file(BLOCK_CRITICAL), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        _allowed_first(client, logging_upstream)
        response = client.get(f"{logging_upstream.url}/v1/share/{quote(wrapped)}/view")
    proxy.flush()
    # The base64 form must not be stored verbatim either: it is the secret to whoever decodes it.
    _assert_blocked(response, logging_upstream, tmp_path / "tape", [secret, wrapped])


def test_stricter_action_wins_with_the_gitleaks_import(start_proxy, logging_upstream, tmp_path) -> None:
    # policies/examples/dlp.yaml: critical -> BLOCK, gitleaks import on. gitleaks' own github-pat
    # (imported as high -> WARN) hits the same span as the built-in critical rule: BLOCK must win.
    secret = _github_pat(6)
    proxy = start_proxy(EXAMPLE_DLP_POLICY, upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        _allowed_first(client, logging_upstream)
        response = client.post(f"{logging_upstream.url}/v1/notes", json={"note": f"deploy with {secret}"})
    proxy.flush()
    _assert_blocked(response, logging_upstream, tmp_path / "tape", [secret])
