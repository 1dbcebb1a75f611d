"""Evidence: a blocked HTTP/2 request keeps `:authority` on the tape (issue 9, "decide").

mitmproxy keeps HTTP/2 pseudo-headers outside `request.headers`, so the event of a refused HTTP/2
request did not show the authority it was refused for. curl speaks HTTP/2 to the proxy's TLS
endpoint (`connection_strategy=lazy`: the logging upstream only speaks HTTP/1.1)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import curl, network_events, read_tape
from tests.security.upstream import LoggingUpstream

POLICY = "version: 1\nmode: enforce\nrules:\n  - {id: no-admin, path: /admin, action: BLOCK}\n"


def test_blocked_http2_request_records_its_authority(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(
        policy_file(POLICY), upstream_ca=logging_upstream.ca_path, sets=["connection_strategy=lazy"]
    )
    result = curl(proxy, "--http2", "-sv", "-H", "x-probe: 1", f"{logging_upstream.url}/admin")
    proxy.flush()
    assert "< HTTP/2 403" in result.stderr, result.stderr
    assert b"/admin" not in logging_upstream.received_bytes()
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("BLOCK", "no-admin")
    assert event["request"]["http_version"] == "HTTP/2.0"
    headers = event["request"]["headers"]
    assert headers[:4] == [
        [":method", "GET"],
        [":scheme", "https"],
        [":authority", f"127.0.0.1:{logging_upstream.port}"],
        [":path", "/admin"],
    ]
    assert ["x-probe", "1"] in headers
