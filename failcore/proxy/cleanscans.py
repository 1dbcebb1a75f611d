"""CleanScans: the parts of a request the blocking DLP scan (failcore.proxy.dlpguard) found clean, so
that the next request that repeats them is not scanned for them again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from failcore.dlp.model import Hit
from failcore.dlp.scanner import DlpScanner

# How many clean texts (see CleanScans) one scanner keeps; past that the set starts over.
CLEAN_SCANS_MAX = 4096
# A text (URL, header, all header names together) longer than this is scanned every time, not kept.
CLEAN_TEXT_MAX = 8192


def _key_chars(key: tuple[object, ...]) -> int:
    """The characters of a key's texts (the header names' tuple counted name by name)."""
    total = 0
    for part in key:
        if isinstance(part, str):
            total += len(part)
        elif isinstance(part, tuple):
            total += _key_chars(part)
    return total


class CleanScans:
    """The parts of a request that repeat from one request to the next (the URL, each header, the
    header names, the whole list of headers read as one block) that one scanner found nothing in.

    A scan's result is a pure function of the scanner's rules and the text, so a text found clean once
    is clean every time and is not scanned again. Only clean results are kept: a text with a hit is
    scanned afresh each time. A credential header whose only hit is its own credential (what the
    header is for) counts as clean, so that value is held here, in memory only, like the flow holds it.
    A new scanner (policy reload) starts with a new, empty set.
    """

    def __init__(self, scanner: DlpScanner, limit: int = CLEAN_SCANS_MAX) -> None:
        self.scanner = scanner
        self.limit = limit
        self._clean: set[tuple[object, ...]] = set()

    def known(self, key: tuple[object, ...]) -> bool:
        """Whether the text(s) of `key` were found clean (`scan` would answer [] at once)."""
        return key in self._clean

    def scan(self, key: tuple[object, ...], scan: Callable[..., list[Hit]], *args: Any) -> list[Hit]:
        if key in self._clean:
            return []
        found = scan(*args)
        if not found:
            self.remember(key)
        return found

    def remember(self, key: tuple[object, ...], chars: int | None = None) -> None:
        """Keep `key` as found clean (what `scan` does when its scan finds nothing). `chars`: its texts'
        characters (_key_chars), when the caller knows them."""
        # Only short texts are kept: 4,096 clean 1 MiB headers would hold 4 GiB for the proxy's life.
        if (_key_chars(key) if chars is None else chars) <= CLEAN_TEXT_MAX:
            if len(self._clean) >= self.limit:
                self._clean.clear()
            self._clean.add(key)
