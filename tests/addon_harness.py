"""failcore's concerns inside mitmproxy's own addon test harness (mitmproxy.test.taddons), the way
mitmproxy tests its addons: no sockets, flows built with mitmproxy.test.tflow, hooks called directly.

`concerns(...)` is the ONE place that knows how `failcore_*` options reach a concern: the Settings addon
(failcore.proxy.settings) declares and checks every one of them and publishes the frozen snapshot the
concerns read (`session.settings`), so the harness registers it first, exactly as the whole proxy does.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mitmproxy import hooks
from mitmproxy.test import taddons

from failcore.proxy.session import FlowState, Session
from failcore.proxy.settings import Settings

T = TypeVar("T")


@dataclass
class Harness:
    """The concerns under test, the Session they share and what they recorded (builders resolved)."""

    tctx: taddons.context
    settings: Settings
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
        self.tctx.configure(self.settings, **options)

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
    settings = Settings(session)
    built = [cls(session) for cls in classes]
    with taddons.context(settings) as tctx:
        tctx.options.update(confdir=str(confdir), **options)
        tctx.master.addons.add(*built)
        everything = set(tctx.options.keys())
        for addon in (settings, *built):
            tctx.master.addons.invoke_addon_sync(addon, hooks.ConfigureHook(everything))
        yield Harness(tctx, settings, session, built, events)


def decoded_by_thread(monkeypatch: Any) -> list[int]:
    """[bytes decoded on the event loop's thread (the harness's main thread), bytes decoded in other
    threads], of every body from now on (failcore.evidence.body.decoded_steps counted)."""
    from failcore.evidence import body

    counts = [0, 0]
    decoded_steps = body.decoded_steps

    def counted(data: bytes, encoding: str | None) -> Iterator[bytes]:
        where = 0 if threading.current_thread() is threading.main_thread() else 1
        for piece in decoded_steps(data, encoding):
            counts[where] += len(piece)
            yield piece

    monkeypatch.setattr(body, "decoded_steps", counted)
    return counts
