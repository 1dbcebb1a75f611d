"""Custom rules from policy YAML, validated strictly so a bad rule fails at load time, not in the proxy."""

from __future__ import annotations

from typing import Any

from failcore.dlp import regex_backend as rx
from failcore.dlp.model import CATEGORIES, RULE_ID_PATTERN, SEVERITIES, VALIDATORS, DlpRule

_ALLOWED_KEYS = frozenset(
    {
        "id",
        "regex",
        "keywords",
        "severity",
        "description",
        "entropy",
        "secret_group",
        "category",
        "validator",
        "allowlist_regexes",
        "allowlist_stopwords",
    }
)


def _string_tuple(rule_id: str, name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"custom DLP rule {rule_id!r}: {name} must be a list of non-empty strings")
    return tuple(value)


def _parse_one(item: Any, source: str) -> DlpRule:
    if not isinstance(item, dict):
        raise ValueError(f"custom DLP rule must be a mapping, got {type(item).__name__}")
    rule_id = item.get("id")
    if not isinstance(rule_id, str) or not RULE_ID_PATTERN.match(rule_id):
        raise ValueError(f"custom DLP rule {rule_id!r}: id must be kebab-case (a-z, 0-9, '-')")
    # YAML keys need not be text (`7: x`): name them as written, never compare them with each other.
    unknown = sorted(str(key) for key in set(item) - _ALLOWED_KEYS)
    if unknown:
        raise ValueError(f"custom DLP rule {rule_id!r}: unknown field(s) {', '.join(unknown)}")
    regex = item.get("regex")
    if not isinstance(regex, str) or not regex:
        raise ValueError(f"custom DLP rule {rule_id!r}: regex is required")
    try:
        compiled = rx.compile_re2(regex)
    except rx.PatternError as exc:
        raise ValueError(
            f"custom DLP rule {rule_id!r}: regex rejected, only linear-time (RE2) syntax is allowed: {exc}"
        ) from None
    severity = item.get("severity", "high")
    if severity not in SEVERITIES:
        raise ValueError(f"custom DLP rule {rule_id!r}: severity must be one of {', '.join(SEVERITIES)}")
    category = item.get("category", "secret")
    if category not in CATEGORIES:
        raise ValueError(f"custom DLP rule {rule_id!r}: category must be one of {', '.join(CATEGORIES)}")
    validator = item.get("validator")
    if validator is not None and validator not in VALIDATORS:
        raise ValueError(f"custom DLP rule {rule_id!r}: validator must be one of {', '.join(VALIDATORS)}")
    entropy = item.get("entropy")
    if entropy is not None and (
        isinstance(entropy, bool) or not isinstance(entropy, int | float) or not 0 <= entropy <= 8
    ):
        raise ValueError(f"custom DLP rule {rule_id!r}: entropy must be a number between 0 and 8")
    secret_group = item.get("secret_group", 0)
    if (
        isinstance(secret_group, bool)
        or not isinstance(secret_group, int)
        or not 0 <= secret_group <= compiled.groups
    ):
        raise ValueError(
            f"custom DLP rule {rule_id!r}: secret_group must be an integer between 0 and "
            f"{compiled.groups} (the regex's capture groups)"
        )
    description = item.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"custom DLP rule {rule_id!r}: description must be a string")
    keywords = tuple(word.lower() for word in _string_tuple(rule_id, "keywords", item.get("keywords")))
    allowlist_regexes = _string_tuple(rule_id, "allowlist_regexes", item.get("allowlist_regexes"))
    for pattern in allowlist_regexes:
        try:
            rx.compile_re2(pattern)
        except rx.PatternError as exc:
            raise ValueError(f"custom DLP rule {rule_id!r}: allowlist regex rejected: {exc}") from None
    return DlpRule(
        id=rule_id,
        severity=severity,
        category=category,
        description=description,
        regex=regex,
        keywords=keywords,
        validator=validator,
        entropy=float(entropy) if entropy is not None else None,
        secret_group=secret_group,
        allowlist_regexes=allowlist_regexes,
        allowlist_stopwords=_string_tuple(rule_id, "allowlist_stopwords", item.get("allowlist_stopwords")),
        source=source,
    )


def parse_custom_rules(items: list[dict[str, Any]], source: str) -> list[DlpRule]:
    rules = [_parse_one(item, source) for item in items]
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise ValueError(f"custom DLP rule {rule.id!r}: duplicate id")
        seen.add(rule.id)
    return rules
