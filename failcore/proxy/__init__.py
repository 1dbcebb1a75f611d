"""failcore's mitmproxy addons, one per concern, sharing one Session.

Order matters: the gate decides first (a replay may then answer from the tape); the meter and the
DLP guard see a request before it is forwarded and register what they need to see of a response
stream; the stream tap then builds that stream (never for a blocked request); the recorder sees the
final state of every flow.
"""

from __future__ import annotations

from failcore.proxy.budgetguard import BudgetGuard
from failcore.proxy.dlpguard import DlpGuard
from failcore.proxy.gate import PolicyGate
from failcore.proxy.meter import LlmMeter
from failcore.proxy.recorder import Recorder
from failcore.proxy.session import Session
from failcore.proxy.streamtap import StreamTap


def make_addons(session: Session | None = None) -> list[object]:
    # Imported here: failcore.replay builds on this package's modules (a top-level import is circular).
    from failcore.replay import Replayer

    session = session or Session()
    return [
        PolicyGate(session),
        LlmMeter(session),
        BudgetGuard(session),
        DlpGuard(session),
        StreamTap(session),
        # After the guards (what they refuse is not served from a tape) and after the stream tap, whose
        # stream the replayer re-cuts at the recorded chunk boundaries.
        Replayer(session),
        Recorder(session),
    ]


__all__ = [
    "BudgetGuard",
    "DlpGuard",
    "LlmMeter",
    "PolicyGate",
    "Recorder",
    "Session",
    "StreamTap",
    "make_addons",
]
