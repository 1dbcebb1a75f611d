"""failcore's mitmproxy addons, one per concern, sharing one Session.

Order matters: the options are checked and published first (failcore.proxy.settings); the gate
decides first (a replay may then answer from the tape); the meter and the DLP guard see a request
before it is forwarded and register what they need to see of a response stream; the stream tap then
builds that stream (never for a blocked request); the recorder sees the final state of every flow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from failcore.proxy.session import Session


class FailCore:
    """The one addon mitmproxy sees: it calls each concern's hooks in order.

    Each concern stays a small mitmproxy-style addon class (and works alone in tests), but mitmproxy
    dispatches every hook to every registered addon, and with seven addons that dispatch alone cost
    a quarter of the proxy's CPU under load (measured with py-spy). Here each hook becomes one call
    that visits only the concerns that implement it and, of those, only the ones that can do anything
    under the current policy and settings (failcore.proxy.dispatch).
    """

    name = "failcore"

    def __init__(self, session: Session | None = None) -> None:
        # Imported where the proxy is built, so importing one module of this package (or a module that
        # imports one) does not load mitmproxy's layers and every addon.
        # Importing the layers registers their hooks in hooks.all_hooks, which FailCore dispatches from.
        import mitmproxy.addonmanager
        import mitmproxy.proxy.layers.http
        import mitmproxy.proxy.layers.tls
        import mitmproxy.proxy.layers.websocket
        import mitmproxy.proxy.server_hooks  # noqa: F401
        from mitmproxy import hooks

        from failcore.proxy.budgetguard import BudgetGuard
        from failcore.proxy.connections import ConnectionEvents
        from failcore.proxy.console import LogMasking, QuietConsole
        from failcore.proxy.dispatch import pruned_dispatcher
        from failcore.proxy.dlpguard import DlpGuard
        from failcore.proxy.gate import PolicyGate
        from failcore.proxy.gctune import GcTune
        from failcore.proxy.hold import RequestHold
        from failcore.proxy.hostdlp import HostDlpGuard
        from failcore.proxy.listen import ListenGuard
        from failcore.proxy.malformed import MalformedRequests
        from failcore.proxy.meter import LlmMeter
        from failcore.proxy.passthrough import PassedThrough
        from failcore.proxy.realtime import RealtimeBudget
        from failcore.proxy.recorder import InFlight, Recorder
        from failcore.proxy.replayer import Replayer
        from failcore.proxy.resolved import ResolvedAddressGuard
        from failcore.proxy.session import Session
        from failcore.proxy.settings import Settings
        from failcore.proxy.streamtap import StreamTap
        from failcore.proxy.tail import StreamTail, TailMount
        from failcore.proxy.tcpstream import TcpRecorder
        from failcore.proxy.verdict import FlowVerdict

        self.session = session or Session()
        s = self.session
        self.listen = ListenGuard(s)
        self.gate = PolicyGate(s)
        self.resolved = ResolvedAddressGuard(s)
        self.hold = RequestHold(s)
        self.meter = LlmMeter(s)
        self.budgets = BudgetGuard(s, prices=self.meter.price_table)
        self.realtime = RealtimeBudget(s, self.budgets)
        self.dlp = DlpGuard(s)
        self.streamtap = StreamTap(s)
        # After the guards (what they refuse is not served from a tape) and after the stream tap, whose
        # stream the replayer re-cuts at the recorded chunk boundaries.
        self.replayer = Replayer(s)
        self.recorder = Recorder(s)
        self.tcp = TcpRecorder(s)
        # Its own addon, added last (after every script): a `stream` a later script sets is judged again.
        streamed = (self.meter, self.budgets, self.dlp, self.streamtap)
        self.tail = StreamTail(
            s,
            [c.requestheaders for c in streamed],
            [c.responseheaders for c in streamed],
        )
        self.concerns = (
            # First: declares and checks every failcore_* option, then publishes them (session.settings).
            Settings(s),
            # Before any concern whose hook may wait: an exchange is in flight (recorded on stop) at once.
            InFlight(self.recorder),
            LogMasking(s),
            GcTune(s),
            self.listen,
            QuietConsole(),
            self.gate,
            # Before anything looks a name up (the resolved-address guard) or opens a tunnel.
            HostDlpGuard(s),
            self.resolved,
            self.hold,
            self.meter,
            # Before the budgets: a realtime session it refuses is not counted as a request.
            self.realtime,
            self.budgets,
            self.dlp,
            self.streamtap,
            TailMount(self.tail),
            # Before the recorder, whose `done` closes the tape (a tunnel open at stop is recorded then).
            PassedThrough(s),
            # Before the recorder, which lets go of the flow's state.
            FlowVerdict(s),
            self.replayer,
            # Before the recorder, whose `done` closes the tape (a stream open at stop is recorded then).
            self.tcp,
            self.recorder,
            MalformedRequests(s),
            ConnectionEvents(s),
        )
        for hook in hooks.all_hooks:
            owners = [c for c in self.concerns if callable(getattr(c, hook, None))]
            handlers = [getattr(c, hook) for c in owners]
            if len(handlers) == 1 and not hasattr(owners[0], "idle_hooks"):
                setattr(self, hook, handlers[0])
            elif handlers:
                setattr(self, hook, pruned_dispatcher(s, hook, owners, handlers))


def make_addons(session: Session | None = None) -> list[object]:
    return [FailCore(session)]


__all__ = ["FailCore", "make_addons"]
