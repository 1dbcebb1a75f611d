"""A secret the engine's first pass over a text sees only as a base64-like run (no rule's match, no
keyword: the plain text holds nothing) is still found in the run decoded, and BLOCKs.

The engine answers such a text without its rule pipeline (failcore.dlp.engine DlpEngine._runs_only):
what is left to scan are the runs. Were that shortcut too eager (a text with only a run answered
"nothing"), each request below would leave. gitleaks' own github-pat token (its fixtures), base64'd,
in a header value (scanned alone and in the header block) and in a JSON body, through the real proxy.
"""

from __future__ import annotations

import base64

from failcore.dlp.pending import wait_until_built
from tests.helpers import network_events, proxied_client, read_tape
from tests.security.helpers import gitleaks_token, tape_bytes
from tests.security.upstream import LoggingUpstream

BLOCK_CRITICAL = """
version: 1
mode: enforce
default: ALLOW
dlp:
  severity_actions: {critical: BLOCK}
"""


def _hyperscan_ready(proxy) -> None:  # type: ignore[no-untyped-def]
    """The full (Hyperscan) engine serves: while it compiles, an interim RE2 engine, which has no such
    shortcut, would answer."""
    session = proxy.proxy.master.addons.get("failcore").session
    wait_until_built(session.dlp.engine)


def _blocked(response, up: LoggingUpstream, tape, forms: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 403, response.text
    for form in forms:
        assert form.encode() not in up.received_bytes(), f"{form[:10]}… reached the upstream"
        assert form.encode() not in tape_bytes(tape), f"{form[:10]}… is on the tape in clear"
    [event] = [e for e in network_events(read_tape(tape)) if e["decision"] == "BLOCK"]
    assert event["rule"] == "dlp:github-pat"
    assert event["dlp"]["engine"] == "hyperscan"


def test_base64_token_in_a_header_blocks(start_proxy, policy_file, logging_upstream, tmp_path) -> None:
    token = gitleaks_token("github-pat")
    encoded = base64.b64encode(token.encode()).decode()
    assert token not in encoded and len(encoded.rstrip("=")) >= 24  # a run of the minimum length or more
    proxy = start_proxy(policy_file(BLOCK_CRITICAL), upstream_ca=logging_upstream.ca_path)
    _hyperscan_ready(proxy)
    with proxied_client(proxy) as client:
        assert client.post(f"{logging_upstream.url}/clean", content=b"clean-marker").status_code == 200
        response = client.post(
            f"{logging_upstream.url}/v1/notes", content=b"{}", headers={"x-trace": encoded}
        )
    proxy.flush()
    assert b"clean-marker" in logging_upstream.received_bytes()
    _blocked(response, logging_upstream, tmp_path / "tape", [token, encoded])


def test_base64_token_in_a_json_body_blocks(start_proxy, policy_file, logging_upstream, tmp_path) -> None:
    token = gitleaks_token("github-pat")
    encoded = base64.b64encode(token.encode()).decode()
    body = ('{"model":"gpt-4o","data":"' + encoded + '"}').encode()
    assert b"\\" not in body and b"%" not in body  # no JSON-escape or percent view: the run alone
    proxy = start_proxy(policy_file(BLOCK_CRITICAL), upstream_ca=logging_upstream.ca_path)
    _hyperscan_ready(proxy)
    with proxied_client(proxy) as client:
        assert client.post(f"{logging_upstream.url}/clean", content=b"clean-marker").status_code == 200
        response = client.post(
            f"{logging_upstream.url}/v1/chat", content=body, headers={"content-type": "application/json"}
        )
    proxy.flush()
    _blocked(response, logging_upstream, tmp_path / "tape", [token, encoded])
