"""DlpScanner: a policy's DLP settings with their compiled engine.

Built by the policy gate when a policy loads, read by the DLP guard (decisions), the request hold and
the evidence builders (masking); so it lives below all of them, not in one of their modules.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from failcore.dlp.engine import DlpEngine
from failcore.dlp.model import DlpRule, Hit
from failcore.dlp.pending import PendingEngine
from failcore.dlp.rules import policy_rules

if TYPE_CHECKING:
    from failcore.policy.model import Action, DlpSettings, Policy

SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}


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
