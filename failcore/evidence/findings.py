"""A finished past-cap DLP scan's results as plain data.

The past-cap scan (failcore.evidence.pastcap.PastCapScan) of a body streamed past the recorded cap runs
while the body streams; its results (offsets and hits) travel with the exchange's event to the DLP
evidence worker (failcore.evidence.scanworker) as plain JSON, which runs the same `scan_event` pass on
them as the proxy would: no pickle, nothing the child could not check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from failcore.dlp.model import Hit

_HIT_FIELDS = ("rule_id", "severity", "category", "start", "end", "preview", "fingerprint", "location")


@dataclass(frozen=True, slots=True)
class PastCapFindings:
    """A finished past-cap scan's results as plain data: what `scan_event` reads of a PastCapScan
    (`where`, `cap`, `results()`), so the same pass runs on it here or in the child."""

    where: str
    cap: int
    found: tuple[tuple[int, Hit], ...]
    coverage: dict[str, Any]
    # Its hits that start inside the recorded part are already masked there (evidence.dlp.
    # mask_straddling, before the echoed credentials' masks move the recorded text).
    masked: bool = False

    def results(self) -> tuple[list[tuple[int, Hit]], dict[str, Any]]:
        return list(self.found), dict(self.coverage)

    def to_wire(self) -> list[Any]:
        hits = [[offset, *(getattr(hit, name) for name in _HIT_FIELDS)] for offset, hit in self.found]
        return [self.where, self.cap, hits, self.coverage, self.masked]

    @classmethod
    def from_wire(cls, data: Any) -> PastCapFindings:
        """Raises ValueError on anything but what to_wire makes."""
        if not (isinstance(data, list) and len(data) == 5):
            raise ValueError("malformed past-cap findings")
        where, cap, hits, coverage, masked = data
        if not (isinstance(where, str) and type(cap) is int and isinstance(hits, list)):
            raise ValueError("malformed past-cap findings")
        if type(masked) is not bool:
            raise ValueError("malformed past-cap findings")
        if not isinstance(coverage, dict):
            raise ValueError("malformed past-cap coverage")
        found = []
        for item in hits:
            if not (isinstance(item, list) and len(item) == len(_HIT_FIELDS) + 1):
                raise ValueError("malformed past-cap hit")
            offset, rule_id, severity, category, start, end, preview, fingerprint, location = item
            if not all(type(n) is int for n in (offset, start, end)):
                raise ValueError("malformed past-cap hit")
            if not all(isinstance(t, str) for t in (rule_id, severity, category, preview, fingerprint)):
                raise ValueError("malformed past-cap hit")
            if location is not None and not isinstance(location, str):
                raise ValueError("malformed past-cap hit")
            hit = Hit(rule_id, severity, category, start, end, preview, fingerprint, location)
            found.append((offset, hit))
        return cls(where, cap, tuple(found), coverage, masked)
