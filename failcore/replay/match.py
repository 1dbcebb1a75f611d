"""Matching live requests against a recording: the n-th identical request gets the n-th recorded
answer, and a miss names the closest recording and the first place the two requests differ."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Final

from failcore.replay.pointers import preview
from failcore.replay.recording import RecordedExchange
from failcore.replay.request import RequestShape, request_difference

MISS_STATUS: Final = 599


class ReplayIndex:
    """Recorded exchanges by request key; each key serves its recordings in order, once each."""

    def __init__(self, exchanges: Sequence[RecordedExchange]) -> None:
        self.exchanges = list(exchanges)
        self.by_key: dict[tuple[Any, ...], deque[RecordedExchange]] = {}
        for ex in self.exchanges:
            key = ex.request.key()
            if key is not None:
                self.by_key.setdefault(key, deque()).append(ex)
        self.consumed: set[int] = set()

    def take(self, live: RequestShape) -> RecordedExchange | None:
        key = live.key()
        queue = self.by_key.get(key) if key is not None else None
        if not queue:
            return None
        ex = queue.popleft()
        self.consumed.add(ex.seq)
        return ex

    def closest(self, live: RequestShape) -> RecordedExchange | None:
        """The recording the live request most likely stands for: the next unused one to the same
        method+host+path, else any to it, else the next unused one to the same host."""
        fresh = [ex for ex in self.exchanges if ex.seq not in self.consumed]
        for pool, same in (
            (fresh, lambda ex: ex.request.route == live.route),
            (self.exchanges, lambda ex: ex.request.route == live.route),
            (fresh, lambda ex: ex.request.host == live.host),
        ):
            for ex in pool:
                if same(ex):
                    return ex
        return None


def miss_body(live: RequestShape, closest: RecordedExchange | None, message: str) -> dict[str, Any]:
    return {
        "error": {
            "type": "failcore_replay_miss",
            "message": message,
            "request": preview(f"{live.method} {live.url}"),
            "closest": {"seq": closest.seq, "summary": preview(closest.summary)} if closest else None,
            "first_difference": request_difference(closest.request, live, closest.sensitive)
            if closest
            else None,
        }
    }
