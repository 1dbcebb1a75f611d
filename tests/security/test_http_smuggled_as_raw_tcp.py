"""Attack: HTTP that mitmproxy does not recognise as HTTP is relayed as raw TCP, past method/path rules
and budgets (adversarial review, finding 1).

Inside a CONNECT tunnel the agent sends "\\r\\nPOST /admin HTTP/1.1…": mitmproxy sees a first byte that
is not a letter and relays the stream as TCP; the origin server skips the leading empty line (RFC 9112
section 2.2) and runs POST /admin. The same over TLS when the client offers no ALPN. A rule naming a
method or path, or a budget, that could apply to the endpoint cannot be checked on such a stream, so
it now applies to the whole stream instead of being skipped: refused in enforce mode (recorded, with the
reason), relayed and marked would_block in observe mode. A `scheme: tcp` rule is the policy's own word on
raw TCP and still decides."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from tests.security.helpers import assert_tcp_refused, read_until_closed, tcp_events, tunnel
from tests.security.upstream import LoggingUpstream

ADMIN_RULE = """
version: 1
mode: {mode}
default: ALLOW
rules:
  - id: no-admin-post
    method: POST
    path: /admin
    action: BLOCK
{extra}"""


def admin_post(upstream: LoggingUpstream) -> bytes:
    return (
        f"POST /admin HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\nContent-Length: 12\r\n"
        "Connection: close\r\n\r\ndelete-all!!"
    ).encode()


@pytest.mark.parametrize("prefix", [b"\r\n", b"\n", b" ", b"\x00"])
def test_smuggled_request_in_a_plain_tunnel_is_refused(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, prefix: bytes
) -> None:
    proxy = start_proxy(policy_file(ADMIN_RULE.format(mode="enforce", extra="")))
    with tunnel(proxy.port, plain_logging_upstream) as sock:
        sock.sendall(prefix + admin_post(plain_logging_upstream))
        answer = read_until_closed(sock, 1)
    proxy.flush()
    event = assert_tcp_refused(answer, plain_logging_upstream, tmp_path / "tape", "no-admin-post")
    assert "could not read as HTTP" in event["reason"] and event["detail"]["blocked_by"] == "policy"


def test_a_well_formed_request_relayed_as_tcp_by_tcp_hosts_is_refused(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """mitmproxy's `tcp_hosts` relays even a well-formed request as TCP: it is not judged as HTTP."""
    proxy = start_proxy(
        policy_file(ADMIN_RULE.format(mode="enforce", extra="")), sets=["tcp_hosts=127\\.0\\.0\\.1"]
    )
    with tunnel(proxy.port, plain_logging_upstream) as sock:
        sock.sendall(admin_post(plain_logging_upstream))
        answer = read_until_closed(sock, 1)
    proxy.flush()
    assert_tcp_refused(answer, plain_logging_upstream, tmp_path / "tape", "no-admin-post")


def test_smuggled_request_over_tls_without_alpn_is_refused(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(
        policy_file("version: 1\nmode: enforce\nrules:\n  - {id: no-admin, path: /admin, action: BLOCK}\n"),
        upstream_ca=logging_upstream.ca_path,
    )
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    context.check_hostname = False  # no ALPN offered: mitmproxy guesses the protocol from the bytes
    with (
        tunnel(proxy.port, logging_upstream) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"\r\n" + admin_post(logging_upstream))
        answer = read_until_closed(tls, 1)
    # (Stopped before the tape is read: a stream mitmproxy has not ended yet is recorded then. Once in
    # a CI run, under load, the stream's end did not come within 60 s.)
    proxy.stop()
    assert answer == b""
    assert b"/admin" not in logging_upstream.received_bytes()
    (event,) = tcp_events(tmp_path / "tape", wait=0)
    assert (event["decision"], event["rule"], event["detail"]["tls"]) == ("BLOCK", "no-admin", True)


def test_smuggled_llm_call_cannot_pass_a_budget_unmetered(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    policy = (
        "version: 1\nmode: enforce\nbudgets:\n  - {id: tokens, window: run, limits: {total_tokens: 30}}\n"
    )
    proxy = start_proxy(policy_file(policy))
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{plain_logging_upstream.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with tunnel(proxy.port, plain_logging_upstream) as sock:
        sock.sendall(b"\r\n" + head.encode() + body)
        answer = read_until_closed(sock, 1)
    proxy.flush()
    event = assert_tcp_refused(answer, plain_logging_upstream, tmp_path / "tape", "budget:tokens")
    assert "cannot meter it" in event["reason"]


def test_observe_mode_relays_and_records_would_block(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(policy_file(ADMIN_RULE.format(mode="observe", extra="")))
    payload = b"\r\n" + admin_post(plain_logging_upstream)
    with tunnel(proxy.port, plain_logging_upstream) as sock:
        sock.sendall(payload)
        echoed = read_until_closed(sock, len(payload))
    proxy.flush()
    assert echoed == payload and plain_logging_upstream.received_bytes() == payload
    (event,) = tcp_events(tmp_path / "tape", wait=60)
    assert (event["decision"], event["would_block"], event["rule"]) == ("WARN", True, "no-admin-post")
    assert event["outcome"] == "ok"


def test_a_tcp_rule_still_decides(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """The control: a policy that says what raw TCP to the endpoint may do is obeyed."""
    extra = "  - id: raw-ok\n    scheme: tcp\n    action: ALLOW\n"
    proxy = start_proxy(policy_file(ADMIN_RULE.format(mode="enforce", extra=extra)))
    with tunnel(proxy.port, plain_logging_upstream) as sock:
        sock.sendall(b"\x00\x01raw")
        echoed = read_until_closed(sock, 5)
    proxy.flush()
    assert echoed == b"\x00\x01raw" == plain_logging_upstream.received_bytes()
    (event,) = tcp_events(tmp_path / "tape", wait=60)
    assert (event["decision"], event["rule"]) == ("ALLOW", "raw-ok")
