"""Streams failcore did not start: mitmproxy's `stream_large_bodies` (taken over by the Settings addon)
and a `stream` another addon (a script loaded before failcore) set. failcore's hold still holds what
the policy must read whole, and its tap still sees, records and scans whatever streams."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.addons.mapremote import MapRemote
from mitmproxy.addons.modifybody import ModifyBody
from mitmproxy.addons.next_layer import NextLayer
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow, tutils

from failcore.proxy.gate import PolicyGate
from failcore.proxy.hold import RequestHold
from failcore.proxy.session import BodyTap, Session
from failcore.proxy.settings import Settings
from failcore.proxy.streamtap import StreamTap
from tests.addon_harness import concerns

DLP_BLOCK = (
    "version: 1\nmode: enforce\ndefault: ALLOW\ndlp:\n  severity_actions: {critical: BLOCK, high: BLOCK}\n"
)
BLOCK_ALL = "version: 1\nmode: enforce\ndefault: BLOCK\n"


def upload(length: int) -> http.HTTPFlow:
    headers = http.Headers([(b"content-length", b"%d" % length)])
    return tflow.tflow(
        req=tutils.treq(host="files.example.com", port=443, scheme=b"https", headers=headers, content=None)
    )


def test_stream_large_bodies_becomes_failcore_s_threshold_and_mitmproxy_s_is_turned_off(
    confdir: Path,
) -> None:
    session = Session()
    settings = Settings(session)
    with taddons.context(Proxyserver(), settings) as tctx:
        tctx.configure(settings, confdir=str(confdir), stream_large_bodies="10k")
        assert session.settings.stream_threshold == 10 * 1024
        assert tctx.options.stream_large_bodies is None
        # A later, larger value never raises failcore's own threshold.
        tctx.configure(settings, stream_large_bodies="5m")
        assert session.settings.stream_threshold == 1 << 20


def test_the_takeover_and_other_options_that_pass_traffic_by_failcore_are_logged(
    confdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    session = Session()
    settings = Settings(session)
    with (
        taddons.context(Proxyserver(), NextLayer(), ModifyBody(), MapRemote(), settings) as tctx,
        caplog.at_level(logging.WARNING, logger="failcore"),
    ):
        tctx.configure(
            settings,
            confdir=str(confdir),
            stream_large_bodies="10k",
            ignore_hosts=[r"internal\.example"],
            map_remote=["|example.com|example.org"],
        )
    text = caplog.text
    assert "stream_large_bodies=10k is taken over by failcore" in text
    assert "ignore_hosts is set" in text and "map_remote is set" in text
    assert "modify_body" not in text and "allow_hosts" not in text


def test_a_stream_callable_set_before_failcore_is_wrapped_and_what_it_yields_recorded(confdir: Path) -> None:
    def split_upper(chunk: bytes) -> Iterator[bytes]:
        yield chunk[:1].upper()
        yield chunk[1:].upper()

    with concerns(PolicyGate, StreamTap, confdir=confdir, failcore_stream_threshold=1000) as h:
        flow = upload(10)  # under the threshold: failcore alone would buffer it
        flow.request.stream = split_upper
        h.hooks(flow, "requestheaders")
        stream = flow.request.stream
        assert callable(stream) and stream is not split_upper
        assert list(stream(b"abc")) == [b"A", b"BC"]
        tap = h.state(flow).request_tap
        assert isinstance(tap, BodyTap) and bytes(tap.kept) == b"ABC" and tap.size == 3


def test_a_stream_set_on_a_small_response_is_tapped(confdir: Path) -> None:
    with concerns(PolicyGate, StreamTap, confdir=confdir) as h:
        flow = tflow.tflow(req=tutils.treq(host="api.example.com", port=443, scheme=b"https"))
        h.hooks(flow, "requestheaders", "request")
        flow.response = tutils.tresp(headers=http.Headers([(b"content-length", b"12")]), content=None)
        flow.response.stream = True
        h.hooks(flow, "responseheaders")
        assert (
            isinstance(flow.response.stream, BodyTap) and h.state(flow).response_tap is flow.response.stream
        )


def test_hold_takes_back_a_stream_the_policy_must_read_whole(confdir: Path, tmp_path: Path) -> None:
    policy = tmp_path / "dlp.yaml"
    policy.write_text(DLP_BLOCK)
    with concerns(
        PolicyGate,
        RequestHold,
        StreamTap,
        confdir=confdir,
        failcore_policy=str(policy),
        failcore_stream_threshold=1000,
    ) as h:
        small, large = upload(10), upload(5000)
        for flow in (small, large):
            flow.request.stream = True
            h.hooks(flow, "requestheaders")
            assert flow.request.stream is False and h.state(flow).request_tap is None
        assert large.metadata.get("failcore_held")  # and bounded by failcore_hold_max, as without the stream


def test_a_blocked_request_is_not_streamed_by_another_addon_s_choice(confdir: Path, tmp_path: Path) -> None:
    policy = tmp_path / "block.yaml"
    policy.write_text(BLOCK_ALL)
    with concerns(PolicyGate, StreamTap, confdir=confdir, failcore_policy=str(policy)) as h:
        flow = upload(5000)
        flow.request.stream = True
        h.hooks(flow, "requestheaders")
        assert flow.request.stream is False
