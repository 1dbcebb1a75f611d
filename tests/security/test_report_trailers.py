"""Attack: hostile HTTP/2 trailers, recorded through the real proxy, then shown by `failcore report`.

The HTML report now shows a message's trailers after its body. A trailer's name and value are
whatever the client sent: they must reach the page as inert text, and a credential sent as a trailer
must stay masked there as it is on the tape."""

from __future__ import annotations

import html

from failcore.report import collect_report, render_report
from tests.helpers import network_events, read_tape
from tests.security.helpers import DLP_BLOCK, h2_post_with_trailers
from tests.security.upstream import LoggingUpstream

PAYLOAD = "<script>window.__pwned=1</script><img src=x onerror=alert(1)>"


def test_hostile_trailers_reach_the_report_as_text(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path
) -> None:
    proxy = start_proxy(
        policy_file(DLP_BLOCK), upstream_ca=logging_upstream.ca_path, sets=["connection_strategy=lazy"]
    )
    trailers = [("x-note", PAYLOAD), ("authorization", "Bearer trailer-credential")]
    assert h2_post_with_trailers(proxy, logging_upstream, trailers) == 200
    proxy.stop()
    assert b"body-marker" in logging_upstream.received_bytes()
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert ["x-note", PAYLOAD] in event["request"]["trailers"]
    page = render_report(collect_report(tmp_path / "tape", event["run"]))
    assert html.escape(PAYLOAD, quote=True) in page, "the trailer is shown, as text"
    assert "<script>" not in page and "<img" not in page
    assert "trailer-credential" not in page
    assert html.escape(dict(event["request"]["trailers"])["authorization"], quote=True) in page
