"""The StreamTail (failcore.proxy.tail) is its own addon, added to the master once it runs so it comes
after every script, in `failcore proxy` (the embedded runner) as in mitmdump, and taken out on done."""

from __future__ import annotations

from mitmproxy.test import taddons

from failcore.proxy.session import Session
from failcore.proxy.tail import StreamTail, TailMount


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
