"""StreamTail: failcore's last word on a body's `stream`, after every other addon's hook.

A script loaded after failcore (`mitmdump -s addons/failcore_addon.py -s after.py`) sees
`requestheaders` and `responseheaders` after failcore did, and a `stream` it sets there was never seen by
failcore's hold or stream tap: a request body the policy must read whole left before the decision, and a
body streamed past failcore's tap was neither recorded nor scanned. mitmproxy calls a hook on its
addons in order, and a script is a child of the ScriptLoader addon; an addon added to the master once
it runs (TailMount.running) comes after the ScriptLoader, hence after every script. There it re-applies
failcore's decision:

- a request the policy must read whole (failcore.proxy.hold) or that is refused is not streamed;
- a stream failcore did not plan (it would have buffered the body) is planned now, as for a `stream`
  set by an addon before failcore: the meter, budget and DLP guards register what they need of it and
  the stream tap wraps it (failcore.proxy.streamtap);
- a stream that replaced failcore's own gets failcore's part back behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mitmproxy import ctx, http

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
    """Adds the StreamTail to the master once it runs (after every script) and takes it out on done."""

    def __init__(self, tail: StreamTail) -> None:
        self.session = tail.session
        self.tail = tail

    def running(self) -> None:
        addons = ctx.master.addons
        if addons.get(self.tail.name) is None:
            addons.add(self.tail)

    def done(self) -> None:
        addons = ctx.master.addons
        if addons.get(self.tail.name) is self.tail:
            addons.remove(self.tail)
