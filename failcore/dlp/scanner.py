"""DlpScanner: a policy's DLP settings with their compiled engine.

Built by the policy gate when a policy loads, read by the DLP guard (decisions), the request hold and
the evidence builders (masking); so it lives below all of them, not in one of their modules. It keeps
the short texts of events its engine found clean (CleanTexts), so that the evidence scan of the next
exchange does not scan them again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from failcore.dlp.engine import DlpEngine
from failcore.dlp.model import DlpRule, Hit
from failcore.dlp.pending import PendingEngine, serving
from failcore.dlp.rules import policy_rules
from failcore.dlp.wide import narrowed

if TYPE_CHECKING:
    from failcore.policy.model import Action, DlpSettings, Policy

SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}


# CleanTexts' bounds: a text longer than this is scanned every time (and not kept); past this many
# characters kept in all, the memo starts over.
CLEAN_TEXT_CHARS = 8192
CLEAN_TEXTS_CHARS = 1 << 20
# What a kept text is charged beyond its characters: the set entry and the object's own header (a
# 4-character str costs ~77 bytes), so that many tiny texts cannot hold ~20x the nominal bound; a
# non-ASCII str is charged 4 bytes a character.
CLEAN_TEXT_OVERHEAD = 80


class CleanTexts:
    """The texts one engine found nothing in, in memory: `scan(text)` of a text found clean before
    answers [] without scanning it again; any other text is scanned by the engine.

    Exact: a scan is a pure function of the engine and the text (the whole text, as given: a text is
    never split into parts remembered apart, so a secret spread over several lines of one text is
    found as before). Only texts without a hit are kept, so a text with one is scanned every time. The
    texts kept are those of the engine serving now: when a PendingEngine's interim engine is replaced
    by the full one, the memo starts over. Bounded: at most CLEAN_TEXTS_CHARS characters of texts of
    at most CLEAN_TEXT_CHARS each; past that it starts over. For the short texts that repeat from one
    exchange to the next (a URL, header names, a header block, a host, a reason); a body is scanned by
    the engine itself.
    """

    def __init__(self, engine: DlpEngine) -> None:
        self.engine = engine
        # (the engine serving, its clean texts, their characters): swapped whole, so a text is only
        # ever added to the set of the engine that scanned it.
        self._state: tuple[DlpEngine | None, set[bytes | str], list[int]] = (None, set(), [0])

    def scan(self, data: bytes | str) -> list[Hit]:
        engine = serving(self.engine)
        state = self._state
        if state[0] is not engine:
            state = self._state = (engine, set(), [0])
        clean = state[1]
        if not isinstance(data, bytes | str):
            data = bytes(data)  # a bytearray or memoryview: kept as the bytes it held
        if data in clean:
            return []
        found = engine.scan(data)
        if not found:
            self._keep(state, data)
        return found

    def lines_clean(self, text: bytes, lead: bytes = b"") -> bool:
        """Whether the engine finds nothing in `text` nor in any line of it read alone, known without
        scanning them (DlpEngine.quiet_lines); `text` is then kept as clean, as its scan would keep it.
        With a `lead` (a request's body), the one pass is over `lead`, a newline, then `text`, and True
        also says the engine finds nothing in `lead`: each is a stretch of whole lines of that text."""
        engine = serving(self.engine)
        if lead:
            # (quiet_lines reads the start of what it is given for a UTF-16 or UTF-32 text: `text`'s too.)
            if narrowed(text) is not None or not engine.quiet_lines(lead + b"\n" + text):
                return False
        elif not engine.quiet_lines(text):
            return False
        state = self._state
        if state[0] is not engine:
            state = self._state = (engine, set(), [0])
        self._keep(state, text)
        return True

    @staticmethod
    def _keep(state: tuple[DlpEngine | None, set[bytes | str], list[int]], data: bytes | str) -> None:
        clean, size = state[1], state[2]
        if len(data) > CLEAN_TEXT_CHARS:
            return
        cost = CLEAN_TEXT_OVERHEAD + len(data) * (1 if isinstance(data, bytes) or data.isascii() else 4)
        if size[0] + cost > CLEAN_TEXTS_CHARS:
            clean.clear()
            size[0] = 0
        clean.add(data)
        size[0] += cost


# Compiling the Hyperscan database takes seconds without its on-disk cache: engines are shared between
# policy reloads (and proxies in one process) that use the same rules, the most recent few kept. An
# engine whose build failed is not kept: the next policy (re)load of those rules builds it again.
_KEEP = 4
_engines: dict[tuple[tuple[DlpRule, ...], bytes], DlpEngine] = {}
_engines_lock = threading.Lock()


def build_failed(engine: DlpEngine) -> bool:
    """Whether this engine's background build ended in an error (every use raises it)."""
    if not isinstance(engine, PendingEngine):
        return False
    try:
        engine.result(timeout=0)
    except TimeoutError:
        return False  # still building
    except RuntimeError:
        return True
    return False


def _engine_for(rules: tuple[DlpRule, ...], salt: bytes, background: bool = True) -> DlpEngine:
    """The engine of these rules. In the `background` it is built so the proxy listens meanwhile; every
    scan waits for it, or, while it compiles, for an engine of the same rules on the RE2 backend that
    finds the same hits (failcore.dlp.pending). Otherwise it is built here (raising its build error):
    for a caller that waits for the full engine anyway, such as a policy reload, whose current engine
    serves meanwhile and for which an interim engine would be built for nothing."""
    key = (rules, salt)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is not None and not build_failed(engine):
            _engines[key] = _engines.pop(key)  # the most recently used goes last
            return engine
    if background:
        pending = PendingEngine(
            lambda: DlpEngine(rules, backend="auto", salt=salt, on_compile=pending.compiling),
            interim=lambda: DlpEngine(rules, backend="re2", salt=salt),
            start=False,
        )
        pending.start()
        engine = cast(DlpEngine, pending)
    else:
        engine = DlpEngine(rules, backend="auto", salt=salt)
    with _engines_lock:
        _engines.pop(key, None)
        _engines[key] = engine
        while len(_engines) > _KEEP:
            del _engines[next(iter(_engines))]
    return engine


@dataclass(frozen=True, slots=True)
class DlpScanner:
    """A policy's DLP settings with their compiled engine; immutable, shared with the writer thread."""

    engine: DlpEngine
    settings: DlpSettings
    enforce: bool
    _can_block: bool = field(init=False, repr=False)
    # The short texts of events this scanner found clean (failcore.evidence.dlp.scan_event): a new
    # scanner (a policy reload) starts afresh.
    clean_texts: CleanTexts = field(init=False, repr=False, compare=False)

    @classmethod
    def for_policy(cls, policy: Policy, salt: bytes, *, background: bool = True) -> DlpScanner | None:
        """`background=False` builds the engine before returning (see `_engine_for`)."""
        rules = policy_rules(policy)
        if rules is None:
            return None
        return cls(_engine_for(rules, salt, background), policy.dlp, policy.mode == "enforce")

    def action(self, hit: Hit) -> Action:
        return self.settings.action_for(hit.rule_id, hit.severity)

    @property
    def can_block(self) -> bool:
        return self._can_block

    def __post_init__(self) -> None:
        s = self.settings
        blocking = (
            s.default_action == "BLOCK"
            or "BLOCK" in s.severity_actions.values()
            or "BLOCK" in s.rule_actions.values()
        )
        object.__setattr__(self, "_can_block", blocking)
        object.__setattr__(self, "clean_texts", CleanTexts(self.engine))
