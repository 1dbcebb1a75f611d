"""failcore's mitmproxy addons, one per concern, sharing one Session.

Order matters: the gate decides first, the stream tap then knows not to stream a blocked request,
and the recorder sees the final state of every flow.
"""

from __future__ import annotations

from failcore.proxy.gate import PolicyGate
from failcore.proxy.recorder import Recorder
from failcore.proxy.session import Session
from failcore.proxy.streamtap import StreamTap


def make_addons(session: Session | None = None) -> list[object]:
    session = session or Session()
    return [PolicyGate(session), StreamTap(session), Recorder(session)]


__all__ = ["PolicyGate", "Recorder", "Session", "StreamTap", "make_addons"]
