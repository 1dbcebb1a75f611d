"""The StreamTail (failcore.proxy.tail) is its own addon, added to the master (after every script) when
something after failcore could set a body's `stream`, in `failcore proxy` (the embedded runner) as in
mitmdump, and taken out on done."""

from __future__ import annotations

from pathlib import Path

from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

from failcore.proxy.gate import PolicyGate
from failcore.proxy.session import BodyTap, Session
from failcore.proxy.streamtap import StreamTap
from failcore.proxy.tail import StreamTail, TailMount, could_stream_after
from tests.addon_harness import concerns
from tests.helpers import proxied_client


class _LaterAddon:
    """An addon after failcore with a headers hook (it does nothing: having the hook is what counts)."""

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        pass


def test_the_embedded_proxy_mounts_the_tail_when_an_addon_after_failcore_could_stream(
    start_proxy, upstream
) -> None:  # type: ignore[no-untyped-def]
    """`failcore proxy` (the embedded runner): nothing after failcore can set a `stream`, so no tail costs
    every event its turn; an addon added after it while it runs brings the tail in before that addon's
    first hook, after failcore and every script."""
    proxy = start_proxy()
    assert proxy.proxy is not None and proxy.proxy.master is not None
    addons = proxy.proxy.master.addons
    with proxied_client(proxy) as client:
        assert client.get(upstream.url + "/json").status_code == 200
        assert proxy.call(lambda: addons.get("failcore_tail")) is None
        proxy.call(lambda: addons.add(_LaterAddon()))
        assert client.get(upstream.url + "/json").status_code == 200
    names = proxy.call(lambda: [getattr(a, "name", type(a).__name__.lower()) for a in addons.chain])
    tail = names.index("failcore_tail")
    assert names.index("failcore") < tail and names.index("scriptloader") < tail
    assert names.index("_lateraddon") < tail
    assert addons.get("failcore_tail") is addons.get("failcore").tail


def test_what_could_stream_after_failcore() -> None:
    """could_stream_after, over chains built by hand (mitmproxy's hook order: each addon, then its
    children): a script after failcore, or a foreign addon with a headers hook, needs the tail;
    mitmproxy's own addons, failcore's other addons without such a hook, or anything before failcore
    do not; a chain without failcore in it always does."""
    from mitmproxy.addons.modifyheaders import ModifyHeaders
    from mitmproxy.addons.script import Script

    session = Session()
    tail = StreamTail(session, [], [])

    class Owner:  # (as failcore.proxy.FailCore: its session and concerns)
        def __init__(self) -> None:
            self.session = session
            self.concerns = ()

    class Quiet:
        def response(self, flow: http.HTTPFlow) -> None:
            pass

    class Parent:
        def __init__(self, *children: object) -> None:
            self.addons = list(children)

    owner = Owner()
    script = Script.__new__(Script)  # (not loaded: its `addons` is empty, but a script it is)
    script.ns = None
    assert not could_stream_after([ModifyHeaders(), owner, ModifyHeaders(), tail, Quiet()], session, tail)
    assert not could_stream_after([_LaterAddon(), owner], session, tail)  # before failcore: failcore sees it
    assert could_stream_after([owner, _LaterAddon()], session, tail)
    assert could_stream_after([owner, Parent(Quiet(), _LaterAddon())], session, tail)  # a child
    assert could_stream_after([Parent(owner, script)], session, tail)  # a script after failcore's
    assert not could_stream_after([Parent(script, owner)], session, tail)
    assert could_stream_after([ModifyHeaders(), Quiet()], session, tail)  # failcore not found


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
