"""Value types shared by the DLP engine, rule sets and helpers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

SEVERITIES: tuple[str, ...] = ("critical", "high", "medium", "low")
CATEGORIES: tuple[str, ...] = ("secret", "pii")
VALIDATORS: tuple[str, ...] = ("luhn", "iban", "ssn", "mixed_token")
ALLOWLIST_TARGETS: tuple[str, ...] = ("secret", "match", "line")
KEYWORD_SCOPES: tuple[str, ...] = ("match", "fragment")
RULE_ID_PATTERN = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


@dataclass(frozen=True, slots=True)
class DlpAllowlist:
    """A gitleaks-style allowlist: a finding is dropped when it matches.

    `condition` "or" drops when any regex or stopword matches; "and" only when a regex AND a stopword
    match (criteria left empty are ignored, as in gitleaks).
    """

    regexes: tuple[str, ...] = ()
    stopwords: tuple[str, ...] = ()
    target: str = "secret"
    condition: str = "or"


@dataclass(frozen=True, slots=True)
class DlpRule:
    """One detector.

    `keywords` are lower-case literals. With `keyword_scope` "match" (built-in and custom rules) a
    match is only reported when its text contains one of them (case-insensitively), which lets the
    engine look at small windows around keyword hits instead of the whole body; with "fragment"
    (gitleaks rules, as gitleaks does it) the keyword may occur anywhere in the scanned text.
    `secret_group` 0 means "first non-empty capture group, else the whole match". `require_digit`: the
    secret must contain a digit (gitleaks' extra check for its generic rules).
    """

    id: str
    severity: str
    category: str
    description: str
    regex: str
    keywords: tuple[str, ...] = ()
    validator: str | None = None
    entropy: float | None = None
    secret_group: int = 0
    allowlist_regexes: tuple[str, ...] = ()
    allowlist_stopwords: tuple[str, ...] = ()
    source: str = "builtin"
    allowlists: tuple[DlpAllowlist, ...] = ()
    keyword_scope: str = "match"
    require_digit: bool = False

    def all_allowlists(self) -> tuple[DlpAllowlist, ...]:
        simple: tuple[DlpAllowlist, ...] = ()
        if self.allowlist_regexes or self.allowlist_stopwords:
            simple = (DlpAllowlist(regexes=self.allowlist_regexes, stopwords=self.allowlist_stopwords),)
        return simple + self.allowlists


@dataclass(frozen=True, slots=True)
class Hit:
    """A detected secret. Never holds the secret itself: only a masked preview and a salted HMAC."""

    rule_id: str
    severity: str
    category: str
    start: int
    end: int
    preview: str
    fingerprint: str
    location: str | None = None


class Scans(Protocol):
    """What scans a text for hits: a DlpEngine, or a memo of the texts one found nothing in
    (failcore.dlp.knownclean.CleanTexts)."""

    def scan(self, data: bytes | str) -> list[Hit]: ...
