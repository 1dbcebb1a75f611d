"""Attack: send a secret the instant the proxy listens, while its DLP rules are still compiling.

The proxy listens before the DLP engine is built (failcore.dlp.pending). A request that needs a DLP
decision must wait for the engine, never pass unscanned; if the engine cannot be built and the policy
says `fail_open: false`, the request is refused."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from failcore.dlp import hscache
from failcore.dlp.pending import PendingEngine
from tests.helpers import network_events, proxied_client, read_tape
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK, send_raw, tape_bytes
from tests.security.upstream import LoggingUpstream


def unique_policy(extra: str = "") -> str:
    """DLP_BLOCK plus a rule only this test uses, so no engine compiled earlier in this process fits."""
    tag = uuid.uuid4().hex[:12]
    return (
        DLP_BLOCK
        + extra
        + f"""  custom:
    - id: startup-{tag}
      regex: 'zq{tag}_[0-9]{{8}}'
      keywords: [zq{tag}_]
      severity: low
"""
    )


def send_in_background(proxy: Any, url: str, body: bytes) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def send() -> None:
        try:
            with proxied_client(proxy) as client:
                result["response"] = client.post(url, content=body)
        except Exception as exc:  # reported by the assertions below
            result["error"] = exc

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, result


def hold_compiles(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """From now on every Hyperscan compile waits until `release` is set; `compiling` says one began."""
    release = threading.Event()
    compiling = threading.Event()
    real = hscache.compile_database

    def held_compile(*args: Any, **kw: Any) -> Any:
        compiling.set()
        assert release.wait(120)
        return real(*args, **kw)

    monkeypatch.setattr(hscache, "compile_database", held_compile)
    return compiling, release


def test_secret_sent_while_the_rules_compile_is_blocked_by_the_interim_engine(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first start compiles for seconds: the exact RE2-backed interim engine decides meanwhile."""
    compiling, release = hold_compiles(monkeypatch)
    try:
        proxy = start_proxy(policy_file(unique_policy()), upstream_ca=logging_upstream.ca_path)
        assert compiling.wait(60)
        with proxied_client(proxy) as client:
            response = client.post(f"{logging_upstream.url}/upload", content=f"key={AWS_KEY_ID}".encode())
            # Still compiling: the interim engine answered.
            assert not release.is_set()
            assert response.status_code == 403
            assert response.headers["x-failcore-rule"] == "dlp:aws-access-key-id"
            assert client.post(f"{logging_upstream.url}/clean", content=b"hello").status_code == 200
    finally:
        release.set()
    proxy.flush()
    assert AWS_KEY_ID.encode() not in logging_upstream.received_bytes()
    assert b"hello" in logging_upstream.received_bytes()
    events = network_events(read_tape(tmp_path / "tape"))
    assert [(e["decision"], e["rule"]) for e in events] == [
        ("BLOCK", "dlp:aws-access-key-id"),
        ("ALLOW", None),
    ]
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")


def test_secret_sent_while_the_rules_compile_waits_when_there_is_no_interim_engine(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PendingEngine, "compiling", lambda self: None)  # no interim engine is built
    compiling, release = hold_compiles(monkeypatch)
    proxy = start_proxy(policy_file(unique_policy()), upstream_ca=logging_upstream.ca_path)
    # start_proxy returned: the proxy listens, and its DLP rules are still compiling.
    assert compiling.wait(60)
    thread, result = send_in_background(proxy, f"{logging_upstream.url}/upload", f"key={AWS_KEY_ID}".encode())
    thread.join(1.0)
    assert thread.is_alive(), f"answered before the DLP engine existed: {result}"
    assert AWS_KEY_ID.encode() not in logging_upstream.received_bytes()
    release.set()
    thread.join(120)
    assert "error" not in result
    assert result["response"].status_code == 403
    assert result["response"].headers["x-failcore-rule"] == "dlp:aws-access-key-id"
    proxy.flush()
    assert logging_upstream.received_bytes() == b""
    events = network_events(read_tape(tmp_path / "tape"))
    assert [(e["decision"], e["rule"]) for e in events] == [("BLOCK", "dlp:aws-access-key-id")]
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")


def test_rules_that_fail_to_compile_fail_closed(
    start_proxy,
    policy_file,
    logging_upstream: LoggingUpstream,
    plain_logging_upstream: LoggingUpstream,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_compile(*args: Any, **kw: Any) -> Any:
        raise MemoryError("no memory for the database")

    monkeypatch.setattr(hscache, "compile_database", broken_compile)
    # No interim engine: the request must meet the failed build, not an interim engine's decision.
    monkeypatch.setattr(PendingEngine, "compiling", lambda self: None)
    policy = unique_policy().replace("default: ALLOW\n", "default: ALLOW\nfail_open: false\n")
    proxy = start_proxy(policy_file(policy), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        response = client.post(f"{plain_logging_upstream.url}/upload", content=f"key={AWS_KEY_ID}".encode())
        # A tunnel's host cannot be scanned either: the CONNECT itself is refused.
        with pytest.raises(httpx.ProxyError, match="502"):
            client.post(f"{logging_upstream.url}/upload", content=f"key={AWS_KEY_ID}".encode())
    authority = f"localhost:{logging_upstream.port}"
    tunnel = send_raw(proxy.port, f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    proxy.flush()
    assert response.status_code == 502
    assert response.headers["x-failcore-decision"] == "FAIL_CLOSED"
    assert tunnel.startswith(b"HTTP/1.1 502") and b"X-FailCore-Decision: FAIL_CLOSED" in tunnel, tunnel
    assert logging_upstream.received_bytes() == b"" and logging_upstream.connections == []
    assert plain_logging_upstream.received_bytes() == b""
    events = read_tape(tmp_path / "tape")
    errors = [e for e in events if e["kind"] == "internal_error"]
    assert errors and "could not be compiled" in errors[0]["error"]
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")


def test_a_reload_keeps_the_current_rules_until_the_new_ones_are_compiled(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = policy_file(unique_policy())
    proxy = start_proxy(path, upstream_ca=logging_upstream.ca_path, sets=["failcore_policy_poll_ms=50"])
    with proxied_client(proxy) as client:
        assert client.post(f"{logging_upstream.url}/marker", content=b"hello").status_code == 200
    compiling, release = hold_compiles(monkeypatch)
    # The edit blocks /marker and brings a new DLP rule (a new engine, compiling until released).
    path.write_text(
        unique_policy().replace("dlp:\n", "rules:\n  - {id: no-marker, path: /marker, action: BLOCK}\ndlp:\n")
    )
    try:
        assert compiling.wait(60)
        with proxied_client(proxy) as client:
            # The current policy is in force meanwhile, its DLP rules included: nothing waits.
            assert client.post(f"{logging_upstream.url}/marker", content=b"still-old").status_code == 200
            secret = client.post(f"{logging_upstream.url}/upload", content=f"key={AWS_KEY_ID}".encode())
            assert secret.status_code == 403
    finally:
        release.set()
    with proxied_client(proxy) as client:
        for _ in range(600):  # the reload finishes compiling, then swaps the policy in
            if client.post(f"{logging_upstream.url}/marker", content=b"new").status_code == 403:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the new policy never came into force")
    proxy.flush()
    seen = logging_upstream.received_bytes()
    assert b"still-old" in seen and AWS_KEY_ID.encode() not in seen
