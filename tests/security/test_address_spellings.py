"""Attack: reach a BLOCKed IP by spelling it another way (issue 9, item 3: SSRF to a metadata address).

The resolver reads `2130706434`, `0x7f000002`, `127.2` and `0177.0.0.2` as 127.0.0.2 (inet_aton), and a
dual-stack socket reaches `::ffff:127.0.0.2` as 127.0.0.2; a rule naming 127.0.0.2 must see all of them.
The blocked address is a logging upstream on 127.0.0.2 (only loopback is reachable here); each request
is written byte for byte to the proxy so no client library normalises the spelling first."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from failcore.policy import canonical_ip, decide, parse_policy
from tests.security.helpers import assert_request_and_connect_refused, request_and_connect, send_raw
from tests.security.upstream import LoggingUpstream

POLICY = """
version: 1
mode: enforce
default: ALLOW
rules:
  - id: no-metadata
    host: 127.0.0.2
    action: BLOCK
    reason: stands in for 169.254.169.254
  - id: no-v6-loopback
    host: "::1"
    action: BLOCK
"""

IPV4_SPELLINGS = [
    "127.0.0.2",
    "2130706434",
    "0x7f000002",
    "0X7F000002",
    "127.2",
    "127.0.2",
    "0177.0.0.2",
    "0x7f.0.0.2",
    "127.000.000.002",
    "017700000002",
    "127.0.0.2.",
]
IPV6_SPELLINGS = ["[::ffff:127.0.0.2]", "[::FFFF:7F00:2]", "[0:0:0:0:0:ffff:127.0.0.2]"]


@pytest.fixture
def blocked_upstream(tmp_path: Path) -> Iterator[LoggingUpstream]:
    with LoggingUpstream(tmp_path / "metadata", tls=False, host="127.0.0.2") as up:
        yield up


@pytest.mark.parametrize("spelling", IPV4_SPELLINGS + IPV6_SPELLINGS)
def test_every_spelling_of_a_blocked_ip_is_blocked(
    start_proxy, policy_file, blocked_upstream: LoggingUpstream, tmp_path: Path, spelling: str
) -> None:
    proxy = start_proxy(policy_file(POLICY))
    answer, tunnel = request_and_connect(proxy.port, f"{spelling}:{blocked_upstream.port}", close=False)
    proxy.flush()
    assert_request_and_connect_refused(answer, tunnel, blocked_upstream, tmp_path / "tape", "no-metadata")


def test_other_addresses_still_pass(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream
) -> None:
    """The control: the same request to 127.0.0.1 reaches its upstream (so the test above can fail)."""
    proxy = start_proxy(policy_file(POLICY))
    authority = f"2130706433:{plain_logging_upstream.port}"  # 127.0.0.1
    answer = send_raw(proxy.port, f"GET http://{authority}/ok HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert b"GET /ok" in plain_logging_upstream.received_bytes()


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("::1", "::1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        ("[::1]", "::1"),
        ("::1%lo", "::1"),
        ("[fe80::1%25eth0]", "fe80::1"),
        ("FE80::0001", "fe80::1"),
        ("::ffff:169.254.169.254", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("169.254.43518", "169.254.169.254"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("api.example.com", None),
        ("1password.com", None),
        ("08.0.0.1", None),
        ("256.1.1.1", None),
        ("1.2.3.4.5", None),
        ("4294967296", None),
    ],
)
def test_canonical_ip_matches_the_resolver(spelling: str, expected: str | None) -> None:
    assert canonical_ip(spelling) == expected
    if expected is not None and "%" not in spelling:
        # What the system resolver (inet_aton / inet_pton) makes of the same text, independently.
        family = socket.AF_INET6 if ":" in spelling else socket.AF_INET
        (info,) = {a[4][0] for a in socket.getaddrinfo(spelling.strip("[]"), 80, family, socket.SOCK_STREAM)}
        mapped = info.removeprefix("::ffff:") if info.startswith("::ffff:") and "." in info else info
        assert mapped == expected


def test_policy_host_patterns_are_canonical_too() -> None:
    policy = parse_policy(
        "version: 1\nmode: enforce\nrules:\n"
        "  - {id: a, host: '0xa9fea9fe', action: BLOCK}\n"
        "  - {id: b, host: '::ffff:10.1.2.3', action: BLOCK}\n"
    )
    for host in ("169.254.169.254", "2852039166", "[::ffff:a9fe:a9fe]"):
        assert decide(policy, host=host, port=80, scheme="http", method="GET", path="/").rule == "a", host
    assert decide(policy, host="10.1.2.3", port=80, scheme="http", method="GET", path="/").rule == "b"
