"""Attack: a brotli bomb (a few hundred bytes that inflate to 64 MiB) used to be weighed by its wire
size, so its evidence was built on the event loop, inflating it while every other flow waited.

No timing threshold: the bomb's evidence builder is made to wait until another flow has completed.
Built off the event loop, that flow completes and releases it; built on the loop, the loop is held and
the other flow cannot complete first."""

from __future__ import annotations

import threading
from typing import Any

import brotli
import pytest

import failcore.evidence.exchange as exchange_module
from tests.helpers import network_events, proxied_client, read_tape
from tests.security.upstream import LoggingUpstream


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = brotli.compress(b"\0" * (64 << 20), quality=1)
    assert len(data) < 100_000
    return data


def test_a_brotli_bomb_does_not_stall_another_flow(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path, monkeypatch, bomb: bytes
) -> None:
    real = exchange_module.body_evidence
    other_flow_done = threading.Event()
    order: list[str] = []

    def watching(data: bytes, **kw: Any) -> dict[str, Any] | None:
        if data == bomb:
            order.append("other flow done" if other_flow_done.wait(20) else "bomb evidence first")
        return real(data, **kw)

    monkeypatch.setattr(exchange_module, "body_evidence", watching)
    proxy = start_proxy(policy_file("version: 1\nmode: observe\n"), upstream_ca=logging_upstream.ca_path)
    with proxied_client(proxy) as client:
        first = client.post(f"{logging_upstream.url}/bomb", content=bomb, headers={"content-encoding": "br"})
        other = client.get(f"{logging_upstream.url}/other")
        other_flow_done.set()
    proxy.flush(timeout=30)
    assert (first.status_code, other.status_code) == (200, 200)
    assert order == ["other flow done"], "the bomb's evidence held the event loop"
    events = {e["path"]: e for e in network_events(read_tape(tmp_path / "tape"))}
    body = events["/bomb"]["request"]["body"]
    assert body["decode_limit_hit"] and body["sha256_of"] == "wire" and body["truncated"]
    assert events["/other"]["outcome"] == "ok"
