"""The StreamTail (failcore.proxy.tail) is its own addon, added to the master once it runs so it comes
after every script, in `failcore proxy` (the embedded runner) as in mitmdump, and taken out on done."""

from __future__ import annotations

from pathlib import Path

from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

from failcore.proxy.gate import PolicyGate
from failcore.proxy.session import BodyTap, Session
from failcore.proxy.streamtap import StreamTap
from failcore.proxy.tail import StreamTail, TailMount
from tests.addon_harness import concerns


def test_the_embedded_proxy_runs_the_tail_after_failcore(start_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy()
    assert proxy.proxy is not None and proxy.proxy.master is not None
    chain = proxy.proxy.master.addons.chain
    names = [getattr(a, "name", type(a).__name__.lower()) for a in chain]
    tail = names.index("failcore_tail")
    assert names.index("failcore") < tail and names.index("scriptloader") < tail
    assert proxy.proxy.master.addons.get("failcore_tail") is proxy.proxy.master.addons.get("failcore").tail


def test_the_tail_is_added_on_running_once_and_removed_on_done() -> None:
    tail = StreamTail(Session(), [], [])
    mount = TailMount(tail)
    with taddons.context(mount) as tctx:
        addons = tctx.master.addons
        assert addons.get("failcore_tail") is None
        mount.running()
        mount.running()  # a reloaded script runs again: still one tail
        assert addons.get("failcore_tail") is tail
        assert [a for a in addons.chain if a is tail] == [tail]
        assert addons.chain[-1] is tail
        mount.done()
        assert addons.get("failcore_tail") is None and tail not in addons.chain


def _upload(length: int) -> http.HTTPFlow:
    headers = http.Headers([(b"content-length", b"%d" % length)])
    return tflow.tflow(
        req=tutils.treq(host="files.example.com", port=443, scheme=b"https", headers=headers, content=None)
    )


def test_a_later_stream_in_place_of_failcore_s_tap_gets_the_tap_back_behind_it(confdir: Path) -> None:
    with concerns(PolicyGate, StreamTap, confdir=confdir, failcore_stream_threshold=1000) as h:
        [_, streamtap] = h.built
        tail = StreamTail(h.session, [streamtap.requestheaders], [streamtap.responseheaders])
        flow = _upload(5000)  # over the threshold: failcore taps it
        h.hooks(flow, "requestheaders")
        tap = h.state(flow).request_tap
        assert isinstance(tap, BodyTap) and flow.request.stream is tap
        flow.request.stream = bytes.upper  # a later script's, in place of failcore's
        tail.requestheaders(flow)
        assert flow.request.stream(b"abc") == b"ABC"
        assert h.state(flow).request_tap is tap and bytes(tap.kept) == b"ABC"

        flow.response = tutils.tresp(headers=http.Headers([(b"content-length", b"5000")]), content=None)
        h.hooks(flow, "responseheaders")
        response_tap = h.state(flow).response_tap
        assert isinstance(response_tap, BodyTap)
        flow.response.stream = True
        tail.responseheaders(flow)
        assert flow.response.stream is response_tap


def test_a_later_stream_on_a_body_failcore_buffers_is_tapped(confdir: Path) -> None:
    with concerns(PolicyGate, StreamTap, confdir=confdir, failcore_stream_threshold=1000) as h:
        [_, streamtap] = h.built
        tail = StreamTail(h.session, [streamtap.requestheaders], [streamtap.responseheaders])
        flow = _upload(10)  # failcore alone buffers it
        h.hooks(flow, "requestheaders")
        assert not flow.request.stream
        flow.request.stream = True
        tail.requestheaders(flow)
        tap = h.state(flow).request_tap
        assert isinstance(tap, BodyTap) and flow.request.stream is tap
        tail.requestheaders(flow)  # failcore's own stream: left as it is
        assert flow.request.stream is tap
