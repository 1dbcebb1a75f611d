"""StreamTail: failcore's last word on a body's `stream`, after every other addon's hook.

A script loaded after failcore (`mitmdump -s addons/failcore_addon.py -s after.py`) sees
`requestheaders` and `responseheaders` after failcore did, and a `stream` it sets there was never seen by
failcore's hold or stream tap: a request body the policy must read whole left before the decision, and a
body streamed past failcore's tap was neither recorded nor scanned. mitmproxy calls a hook on its
addons in order, and a script is a child of the ScriptLoader addon; an addon added to the master once
it runs comes after the ScriptLoader, hence after every script. TailMount adds it there whenever
something after failcore could set a `stream` (a script, a foreign addon with a headers hook), looked
at again at every exchange's headers. There it re-applies failcore's decision:

- a request the policy must read whole (failcore.proxy.hold) or that is refused is not streamed;
- a stream failcore did not plan (it would have buffered the body) is planned now, as for a `stream`
  set by an addon before failcore: the meter, budget and DLP guards register what they need of it and
  the stream tap wraps it (failcore.proxy.streamtap);
- a stream that replaced failcore's own gets failcore's part back behind it.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.addonmanager import traverse

from failcore.proxy.cutoff import CuttingTap
from failcore.proxy.guard import guarded
from failcore.proxy.hold import must_hold
from failcore.proxy.session import BodyTap, Session
from failcore.proxy.streamtap import ThenTap, rechain_request, rechain_response
from failcore.replay.serve import Rechunker

# The `stream` callables failcore installs (each holds failcore's tap).
FAILCORE_REQUEST_STREAMS = (BodyTap, ThenTap)
FAILCORE_RESPONSE_STREAMS = (BodyTap, CuttingTap, ThenTap, Rechunker)

Hook = Callable[[http.HTTPFlow], Any]


class StreamTail:
    name = "failcore_tail"

    def __init__(
        self, session: Session, request_hooks: Sequence[Hook], response_hooks: Sequence[Hook]
    ) -> None:
        self.session = session
        # failcore's concerns whose choice depends on whether a body streams, in failcore's order.
        self.request_hooks = tuple(request_hooks)
        self.response_hooks = tuple(response_hooks)

    @guarded("tail.requestheaders")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        stream = flow.request.stream
        if flow.response is not None or not stream or isinstance(stream, FAILCORE_REQUEST_STREAMS):
            return
        state = self.session.flows.get(flow.id)
        refused = state is not None and (
            state.blocked or (state.decision is not None and state.decision.decision == "BLOCK")
        )
        if refused or must_hold(flow):
            flow.request.stream = False  # the decision comes first
            return
        if state is not None and state.request_tap is not None:
            rechain_request(flow, state)
            return
        if state is not None:
            state.request_streams = None  # decided again: it streams now
        for hook in self.request_hooks:
            hook(flow)

    @guarded("tail.responseheaders")
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None:
            return
        stream = response.stream
        if not stream or isinstance(stream, FAILCORE_RESPONSE_STREAMS):
            return
        state = self.session.flows.get(flow.id)
        if state is not None and state.response_tap is not None:
            rechain_response(self.session, flow, state)
            return
        if state is not None:
            # Planned again as a stream, from scratch: what the guards registered for a whole body goes.
            state.response_streams = None
            state.cut_guards.clear()
            state.stream_observers.clear()
        for hook in self.response_hooks:
            hook(flow)


class TailMount:
    """Adds the StreamTail to the master when something mitmproxy calls after failcore could set a
    body's `stream` (could_stream_after), and takes it out on done.

    Every addon in mitmproxy's chain costs each event (eight per exchange) a coroutine and a context
    manager, whether it has a hook for it or not: mounted for nothing, the tail cost ~13 µs per plain
    exchange (benchmarks/proxy_threads.py). So it is mounted when the proxy runs if it is needed then,
    and at each exchange's request and response headers the chain and the script list are compared
    with what was looked at last (their lengths and the script list's identity): an addon added, a
    script loaded or replaced since is looked at before the hook of the exchange that meets it, so a
    stream it sets in that very hook is judged. Once mounted it stays until done."""

    def __init__(self, tail: StreamTail) -> None:
        self.session = tail.session
        self.tail = tail
        self._looked_at: tuple[int, int, int] | None = None

    def running(self) -> None:
        self._looked_at = None
        self._mount_if_needed()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._mount_if_needed()

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._mount_if_needed()

    def done(self) -> None:
        self._looked_at = None
        addons = ctx.master.addons
        if addons.get(self.tail.name) is self.tail:
            addons.remove(self.tail)

    def _mount_if_needed(self) -> None:
        addons = ctx.master.addons
        scripts = getattr(addons.get("scriptloader"), "addons", ())
        shape = (len(addons.chain), id(scripts), len(scripts))
        if shape == self._looked_at:
            return
        self._looked_at = shape
        if addons.get(self.tail.name) is None and could_stream_after(addons.chain, self.session, self.tail):
            addons.add(self.tail)


def could_stream_after(chain: Sequence[Any], session: Session, tail: StreamTail) -> bool:
    """Whether anything mitmproxy calls after failcore (the addon whose session is `session`), in its
    hook order (each chain addon, then its children, depth first), could set a body's `stream`: a
    script (its code can change: mitmproxy reloads it), or an addon or module not from mitmproxy itself
    with a requestheaders or responseheaders hook. mitmproxy's own addons never set one (the HTTP layer's
    `stream_large_bodies` is failcore.proxy.settings'). When failcore is not found, the tail is needed."""
    from mitmproxy.addons.script import Script

    seen = False
    for addon in traverse(chain):
        if not seen:
            seen = getattr(addon, "session", None) is session and hasattr(addon, "concerns")
            continue
        if addon is tail:
            continue
        if isinstance(addon, Script):
            return True
        module = addon.__name__ if isinstance(addon, types.ModuleType) else type(addon).__module__
        if module == "mitmproxy" or module.startswith("mitmproxy."):
            continue
        if callable(getattr(addon, "requestheaders", None)) or callable(
            getattr(addon, "responseheaders", None)
        ):
            return True
    return not seen
