"""failcore's concerns inside mitmproxy's own addon test harness (mitmproxy.test.taddons), the way
mitmproxy tests its addons: no sockets, flows built with mitmproxy.test.tflow, hooks called directly.

`concerns(...)` is the ONE place that knows how `failcore_*` options reach a concern. Today every
concern declares its own options in `load()` (and some read another's: `failcore_body_cap`,
`failcore_stream_threshold`), so the harness first registers an addon declaring all of them, exactly as
the whole proxy does. When option ownership moves to a single settings addon, only this module
changes; the tests that use it do not.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mitmproxy import hooks
from mitmproxy.test import taddons

from failcore.proxy import FailCore
from failcore.proxy.session import FlowState, Session

T = TypeVar("T")


class _EveryFailcoreOption:
    """Declares every failcore_* option, as the assembled proxy does, and nothing else."""

    name = "failcore-options-under-test"

    def load(self, loader: Any) -> None:
        for concern in FailCore(Session()).concerns:
            declare = getattr(concern, "load", None)
            if callable(declare):
                declare(loader)


@dataclass
class Harness:
    """The concerns under test, the Session they share and what they recorded (builders resolved)."""

    tctx: taddons.context
    session: Session
    built: list[Any]
    events: list[dict[str, Any]] = field(default_factory=list)

    def get(self, cls: type[T]) -> T:
        [found] = [c for c in self.built if isinstance(c, cls)]
        return found

    def state(self, flow: Any) -> FlowState:
        return self.session.flows[flow.id]

    def run(self, result: Any) -> None:
        """Finish what a hook handed back to mitmproxy to await (work moved off the event loop)."""
        if result is not None and inspect.isawaitable(result):
            self.tctx.master.event_loop.run_until_complete(result)

    def hooks(self, flow: Any, *names: str) -> None:
        """Call these hooks on every concern that has them, in the order the concerns were given,
        awaiting what a hook hands back as mitmproxy would."""
        for name in names:
            for concern in self.built:
                hook = getattr(concern, name, None)
                if callable(hook):
                    self.run(hook(flow))

    def configure(self, **options: Any) -> None:
        """Change options as a running proxy would (`set` in the console): every concern's configure
        sees those names; an OptionsError is raised and the options roll back."""
        self.tctx.configure(self.built[0], **options)

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == kind]


@contextmanager
def concerns(*classes: type, confdir: Path, **options: Any) -> Iterator[Harness]:
    """Build these concern classes on one Session, with these failcore_* (or mitmproxy) options set
    before their first `configure` (as on a proxy's command line), in the order given."""
    session = Session()
    events: list[dict[str, Any]] = []

    def sink(item: Any) -> bool:
        events.append(item() if callable(item) else item)
        return True

    session.attach(sink)
    built = [cls(session) for cls in classes]
    with taddons.context(_EveryFailcoreOption()) as tctx:
        tctx.options.update(confdir=str(confdir), **options)
        tctx.master.addons.add(*built)
        everything = set(tctx.options.keys())
        for concern in built:
            tctx.master.addons.invoke_addon_sync(concern, hooks.ConfigureHook(everything))
        yield Harness(tctx, session, built, events)
