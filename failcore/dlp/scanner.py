"""DlpScanner: a policy's DLP settings with their compiled engine.

Built by the policy gate when a policy loads, read by the DLP guard (decisions), the request hold and
the evidence builders (masking); so it lives below all of them, not in one of their modules.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from failcore.dlp.engine import DlpEngine
from failcore.dlp.model import DlpRule, Hit
from failcore.dlp.pending import PendingEngine
from failcore.dlp.rules import policy_rules

if TYPE_CHECKING:
    from failcore.policy.model import Action, DlpSettings, Policy

SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}


@functools.lru_cache(maxsize=4)
def _engine_for(rules: tuple[DlpRule, ...], salt: bytes) -> DlpEngine:
    # Compiling the Hyperscan database takes seconds without its on-disk cache: share it between policy
    # reloads (and proxies in one process) that use the same rules, and build it in the background so
    # the proxy listens meanwhile; every scan waits for it, or, while it compiles, for an engine of the
    # same rules on the RE2 backend that finds the same hits (failcore.dlp.pending).
    pending = PendingEngine(
        lambda: DlpEngine(rules, backend="auto", salt=salt, on_compile=pending.compiling),
        interim=lambda: DlpEngine(rules, backend="re2", salt=salt),
        start=False,
    )
    pending.start()
    return cast(DlpEngine, pending)


@dataclass(frozen=True, slots=True)
class DlpScanner:
    """A policy's DLP settings with their compiled engine; immutable, shared with the writer thread."""

    engine: DlpEngine
    settings: DlpSettings
    enforce: bool
    _can_block: bool = field(init=False, repr=False)

    @classmethod
    def for_policy(cls, policy: Policy, salt: bytes) -> DlpScanner | None:
        rules = policy_rules(policy)
        if rules is None:
            return None
        return cls(_engine_for(rules, salt), policy.dlp, policy.mode == "enforce")

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
