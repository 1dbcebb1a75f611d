"""Evidence attack: a header value that starts like failcore's own redaction (`[redacted …`) was taken
for one and never scanned or masked, so the secret after it was written to the tape in clear (in
enforce mode too: a blocked request's headers are recorded), and a copy of the request's own
credential after it was not masked either. Only a value that is one fingerprint and nothing else is a
redaction. Through the real proxy; the tape must hold neither."""

from __future__ import annotations

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.helpers import DLP_BLOCK, tape_bytes
from tests.security.upstream import LoggingUpstream

# GitHub's documented classic personal access token shape (ghp_ + 36 characters).
TOKEN = "ghp_" + "8xQ2mZ7rT4vK9pL3nW6yB1cD5fG0hJ2sA4eU"
SESSION = "s3ss10n-" + "Qm9vdHN0cmFw" * 2


def test_a_secret_behind_a_redaction_lookalike_is_blocked_and_masked(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    up = plain_logging_upstream
    proxy = start_proxy(policy_file(DLP_BLOCK))
    with proxied_client(proxy) as client:
        blocked = client.post(
            f"{up.url}/v1/x", headers={"X-Note": f"[redacted hmac-sha256:0] {TOKEN}"}, content=b"marker"
        )
        echoed = client.get(
            f"{up.url}/v1/y", headers={"Cookie": f"sid={SESSION}", "X-Trace": f"[redacted ] {SESSION}"}
        )
    proxy.flush()
    assert blocked.status_code == 403 and echoed.status_code == 200
    seen = up.received_bytes()
    assert TOKEN.encode() not in seen and b"marker" not in seen
    on_disk = tape_bytes(tmp_path / "tape")
    assert TOKEN.encode() not in on_disk
    assert SESSION.encode() not in on_disk
    events = {e["path"]: e for e in network_events(read_tape(tmp_path / "tape"))}
    assert (events["/v1/x"]["decision"], events["/v1/x"]["rule"]) == ("BLOCK", "dlp:github-pat")
    assert {h["rule"] for h in events["/v1/x"]["dlp"]["hits"]} == {"github-pat"}
