"""Strings a DLP rule set is known to find nothing in, remembered between runs.

`failcore run` masks its own command line on the tape with the run's DLP rules. A run whose command
made no request would build the whole engine (RE2 compiles, pattern analysis, cached databases: ~0.15 s
of CPU for the default rules, ~0.5 s for gitleaks') only to scan a few strings that are the same from
run to run (`failcore`, `run`, `--`, `python`, `agent.py`). So each string the engine scanned without a
hit is remembered: its HMAC under the home's salt, in an entry of the compiled-database cache
(failcore.dlp.hscache: 0600 under a 0700 directory, checksummed, written atomically) named after
everything that decides what the engine finds:

- every rule, as written (regex, keywords, entropy, validator, allowlists, severity, ...);
- the source of every module of `failcore.dlp` (the engine, its decoders, validators, masking);
- which RE2 and Hyperscan bindings are installed (path, size and modification time of each), and the
  engine backend the caller scans with.

A string is skipped only when it is in the entry: the engine, given the same rules and code, would
find nothing in it again (it is deterministic). Any other string, a changed rule or a changed module
means a scan as before. Only strings without hits are remembered, as keyed hashes, never in clear.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from failcore.dlp import hscache

if TYPE_CHECKING:
    from failcore.dlp.model import DlpRule

FORMAT = b"failcore-known-clean/1"
DIGEST_SIZE = 16
# Bounded: a command line is a few dozen strings; the newest are kept.
MAX_VALUES = 512
# Strings longer than this are always scanned (and not remembered).
MAX_VALUE_CHARS = 4096


@functools.cache
def _code_digest() -> bytes:
    """The DLP package's own source, and the regex libraries it would load."""
    digest = hashlib.sha256(FORMAT)
    package = Path(__file__).resolve().parent
    for path in sorted(package.glob("*.py")):
        data = path.read_bytes()
        digest.update(path.name.encode() + b"\x00" + len(data).to_bytes(8, "big") + data)
    for name in ("re2", "_re2", "hyperscan", "hyperscan._hyperscan"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None else None
        try:
            st = os.stat(origin) if origin else None
        except OSError:
            st = None
        size, mtime = (st.st_size, st.st_mtime_ns) if st else (-1, -1)
        digest.update(f"{name}\x00{origin}\x00{size}\x00{mtime}\x00".encode())
    return digest.digest()


def rules_key(rules: Sequence[DlpRule]) -> bytes:
    digest = hashlib.sha256(_code_digest())
    for rule in rules:
        text = repr(rule).encode("utf-8", "surrogatepass")
        digest.update(len(text).to_bytes(8, "big") + text)
    return digest.digest()


class KnownClean:
    """The strings one rule set found nothing in (as HMACs under `salt`), loaded from and saved to the
    cache. `clean(value)` is exact: True only for a string the same engine scanned without a hit."""

    def __init__(self, rules: Sequence[DlpRule], salt: bytes, backend: str = "auto") -> None:
        """`backend`: the DlpEngine backend the caller scans with (part of the entry's name)."""
        self._salt = salt
        self._key = hashlib.sha256(FORMAT + backend.encode() + b"\x00" + rules_key(rules)).digest()
        payload = hscache.read_entry(self._key)
        self._known: list[bytes] = []
        if payload is not None and len(payload) % DIGEST_SIZE == 0:
            self._known = [payload[i : i + DIGEST_SIZE] for i in range(0, len(payload), DIGEST_SIZE)]
        self._set = set(self._known)
        self._added = False

    def _mac(self, value: str) -> bytes:
        raw = value.encode("utf-8", "surrogatepass")
        return hmac.new(self._salt, raw, hashlib.sha256).digest()[:DIGEST_SIZE]

    def clean(self, value: str) -> bool:
        return len(value) <= MAX_VALUE_CHARS and self._mac(value) in self._set

    def remember(self, value: str) -> None:
        """`value` was scanned by this rule set's engine and nothing was found in it."""
        if len(value) > MAX_VALUE_CHARS:
            return
        mac = self._mac(value)
        if mac in self._set:
            return
        self._set.add(mac)
        self._known.append(mac)
        self._added = True

    def save(self) -> None:
        if self._added:
            hscache.write_entry(self._key, b"".join(self._known[-MAX_VALUES:]))
            self._added = False
