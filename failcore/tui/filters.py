"""Event filters of the viewer: decision, kind, host, status class and a text search over the raw line."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Final

import orjson

from failcore.tui.index import EventRow
from failcore.tui.render import status_class

DECISION_CYCLE: Final = (None, "ALLOW", "WARN", "BLOCK")
STATUS_CYCLE: Final = (None, "2xx", "3xx", "4xx", "5xx", "error")
KIND_CYCLE: Final = (None, "network", "tool", "fs", "exec", "connect")
_CYCLES: Final = {"decision": DECISION_CYCLE, "status": STATUS_CYCLE, "kind": KIND_CYCLE}


@dataclass(frozen=True, slots=True)
class EventFilter:
    decision: str | None = None
    host: str | None = None  # substring, case-insensitive
    status: str | None = None  # 2xx … 5xx or "error"
    text: str | None = None  # searched in the whole recorded line (headers, bodies, …)
    kind: str | None = None  # network, tool, fs, exec, connect

    @property
    def active(self) -> bool:
        return any((self.decision, self.host, self.status, self.text, self.kind))

    def matches_row(self, row: EventRow) -> bool:
        """The cheap part, on indexed fields only."""
        if self.decision is not None and row.decision != self.decision:
            return False
        if self.kind is not None and row.kind != self.kind:
            return False
        if self.host and self.host.lower() not in row.host.lower():
            return False
        return self.status is None or status_class(row) == self.status

    def needle(self) -> bytes | None:
        """The search text as it appears inside a JSON string on the tape, lower-cased."""
        if not self.text:
            return None
        return orjson.dumps(self.text)[1:-1].lower()

    def cycled(self, field: str) -> EventFilter:
        cycle = _CYCLES[field]
        current = getattr(self, field)
        return replace(self, **{field: cycle[(cycle.index(current) + 1) % len(cycle)]})

    def describe(self) -> str:
        parts = [
            f"decision={self.decision}" if self.decision else "",
            f"kind={self.kind}" if self.kind else "",
            f"host~{self.host}" if self.host else "",
            f"status={self.status}" if self.status else "",
            f"text~{self.text}" if self.text else "",
        ]
        return " ".join(p for p in parts if p) or "none"


def filter_positions(
    positions: Iterable[int],
    event_filter: EventFilter,
    row_at: Callable[[int], EventRow],
    raw_of: Callable[[EventRow], bytes],
) -> Iterator[int]:
    needle = event_filter.needle()
    for position in positions:
        row = row_at(position)
        if not event_filter.matches_row(row):
            continue
        if needle is not None and needle not in raw_of(row).lower():
            continue
        yield position
