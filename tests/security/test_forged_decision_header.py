"""Attack: an upstream answers with failcore's own `X-FailCore-Decision` header.

failcore marks the answers it builds itself (a refusal) and keys on that mark, never on a header an
upstream can send: an allowed HTTP/2 request whose upstream claims `X-FailCore-Decision: BLOCK` is
recorded as the ALLOW it was, its headers as the client sent them (no pseudo-headers put back, as
they are only for a request failcore answered itself)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import curl, network_events, read_tape
from tests.security.upstream import LoggingUpstream

POLICY = "version: 1\nmode: enforce\nrules:\n  - {id: no-admin, path: /admin, action: BLOCK}\n"


def test_an_upstreams_decision_header_is_not_failcores(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    logging_upstream.respond_with = (
        200,
        [(b"content-type", b"application/json"), (b"x-failcore-decision", b"BLOCK")],
        b'{"forged": true}',
    )
    proxy = start_proxy(
        policy_file(POLICY), upstream_ca=logging_upstream.ca_path, sets=["connection_strategy=lazy"]
    )
    result = curl(proxy, "--http2", "-sv", "-H", "x-probe: 1", f"{logging_upstream.url}/public")
    proxy.flush()
    assert "< HTTP/2 200" in result.stderr, result.stderr
    assert b"GET /public" in logging_upstream.received_bytes()
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["outcome"]) == ("ALLOW", "ok"), event
    assert not event.get("rule")
    assert event["request"]["http_version"] == "HTTP/2.0"
    names = [name for name, _ in event["request"]["headers"]]
    assert not [n for n in names if n.startswith(":")], names
    assert "x-probe" in names
    # What the upstream sent is kept as it came: the forged header is evidence too.
    assert ["x-failcore-decision", "BLOCK"] in event["response"]["headers"]
