"""Attack: reach an inward IPv4 address through an IPv6 spelling that embeds it (adversarial review,
finding 5).

`network.block_private_resolved` judged `64:ff9b::10.0.0.1` (NAT64), `2002:a9fe:a9fe::1` (6to4 of
169.254.169.254) and `::10.0.0.1` (IPv4-compatible) public: the IPv4 address a NAT64 gateway or 6to4
relay forwards to was never looked at, unlike in the runtime's SSRF guard. Both now share one
classification. The request is refused before any connection is attempted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import network_events, read_tape
from tests.security.helpers import send_raw

POLICY = "version: 1\nmode: enforce\ndefault: ALLOW\nnetwork:\n  block_private_resolved: true\n"


@pytest.mark.parametrize(
    "address", ["64:ff9b::10.0.0.1", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "::10.0.0.1"]
)
def test_an_embedded_inward_ipv4_address_is_refused(
    start_proxy, policy_file, tmp_path: Path, address: str
) -> None:
    proxy = start_proxy(policy_file(POLICY))
    authority = f"[{address}]:8080"
    answer = send_raw(
        proxy.port, f"GET http://{authority}/inward HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
    )
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403"), answer
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("BLOCK", "network.block_private_resolved")
    assert event["outcome"] == "BLOCKED"
