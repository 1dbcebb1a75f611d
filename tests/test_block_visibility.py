"""Blocked agents see why, and what failcore refused costs them nothing."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from tests.helpers import network_events, proxied_client, read_tape

AWS_KEY = "AKIAZ7Q2XRHLYW4NPF6K"

BLOCK_HOST = """
version: 1
mode: enforce
default: ALLOW
rules:
  - id: no-loopback-ip
    host: 127.0.0.1
    action: BLOCK
    reason: "agents may not reach 127.0.0.1"
"""

BUDGET_AND_DLP = """
version: 1
mode: enforce
default: ALLOW
budgets:
  - id: three-calls
    window: run
    limits: {requests: 3}
dlp:
  severity_actions: {high: BLOCK, critical: BLOCK}
"""


def test_a_refused_connect_says_who_refused_it_and_by_which_rule(start_proxy, policy_file, upstream) -> None:
    proxy = start_proxy(policy_file(BLOCK_HOST))
    target = f"https://127.0.0.1:{upstream.port}/json"
    assert shutil.which("curl"), "curl is required for the tests"
    curl = subprocess.run(
        ["curl", "-sv", "--proxy", proxy.url, "--cacert", str(proxy.ca_cert), target],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert curl.returncode != 0
    assert "403 Blocked by failcore (rule no-loopback-ip)" in curl.stderr, curl.stderr
    assert "X-FailCore-Rule: no-loopback-ip" in curl.stderr
    assert "X-FailCore-Reason: agents may not reach 127.0.0.1" in curl.stderr
    # Python's standard client prints the status line it got.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": proxy.url}))
    try:
        opener.open(target, timeout=30)
        raise AssertionError("the CONNECT was not refused")
    except urllib.error.URLError as e:
        assert "Blocked by failcore (rule no-loopback-ip)" in str(e.reason)


def test_a_dlp_blocked_request_does_not_count_toward_a_requests_budget(
    start_proxy, policy_file, upstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(BUDGET_AND_DLP))
    upstream.reset()
    with proxied_client(proxy) as client:
        statuses = [client.post(upstream.url + "/echo", json={"n": 1}).status_code]
        statuses.append(client.post(upstream.url + "/echo", json={"key": AWS_KEY}).status_code)
        statuses += [client.post(upstream.url + "/echo", json={"n": n}).status_code for n in (2, 3, 4)]
    proxy.flush()
    # The refused call never reached the upstream, so three clean calls fit the budget of three.
    assert statuses == [200, 403, 200, 200, 429]
    assert upstream.request_count("/echo") == 3
    rules = [e["rule"] for e in network_events(read_tape(tmp_path / "tape")) if e["decision"] == "BLOCK"]
    assert rules == ["dlp:aws-access-key-id", "budget:three-calls"]
