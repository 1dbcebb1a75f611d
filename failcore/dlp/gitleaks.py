"""Import gitleaks TOML rule sets (https://github.com/gitleaks/gitleaks, MIT) as DLP rules.

gitleaks scans files; failcore scans HTTP traffic, so anything keyed on a file path cannot apply and
is reported as skipped. Patterns are Go RE2 syntax; the few constructs the byte-level engines read
differently are rewritten, and every pattern must compile with RE2 (linear time) to be loaded.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failcore.dlp import regex_backend as rx
from failcore.dlp.model import ALLOWLIST_TARGETS, DlpAllowlist, DlpRule

# gitleaks has no severities; a leaked credential is treated as high unless policy says otherwise.
DEFAULT_SEVERITY = "high"


@dataclass(slots=True)
class GitleaksImport:
    rules: list[DlpRule] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}


def translate_go_regex(pattern: str) -> str:
    """Rewrite Go RE2 syntax into the subset both Python RE2 and Hyperscan read the same way.

    * `\\z` (end of text) becomes `$`: both engines run without multi-line mode, where `$` already
      means end of text for RE2 (Hyperscan additionally allows a final newline, RE2 confirms).
    * POSIX classes `[[:alpha:]]` become explicit ASCII ranges (Hyperscan rejects some inside sets).
    * Non-ASCII literals are refused: matching is byte-level and Go matches runes.
    """
    if not pattern.isascii():
        raise rx.PatternError("non-ASCII literal in pattern (Go matches UTF-8 runes, failcore bytes)")
    translated = re.sub(r"(?<!\\)((?:\\\\)*)\\z", r"\1$", pattern)
    return re.sub(r"\[:(\^?)([a-z]+):\]", _posix_class, translated)


def _posix_class(match: re.Match[str]) -> str:
    negated, name = match.group(1), match.group(2)
    if name not in _POSIX_CLASSES:
        raise rx.PatternError(f"unknown POSIX class [:{name}:]")
    if negated:
        raise rx.PatternError(f"negated POSIX class [:^{name}:] is not supported")
    return _POSIX_CLASSES[name]


def _translate_allowlist(raw: dict[str, Any], owner: str) -> DlpAllowlist | None:
    """None when the allowlist only constrains paths or commits, which never apply to traffic."""
    regexes = tuple(translate_go_regex(p) for p in raw.get("regexes", ()))
    stopwords = tuple(str(word).lower() for word in raw.get("stopwords", ()))
    condition = str(raw.get("condition", "or")).lower()
    if condition == "and" and (raw.get("paths") or raw.get("commits")):
        # An AND that needs a path can never be satisfied without a file path.
        return None
    if not regexes and not stopwords:
        return None
    target = str(raw.get("regexTarget", "secret")).lower()
    if target not in ALLOWLIST_TARGETS:
        raise rx.PatternError(f"{owner}: unknown regexTarget {target!r}")
    for pattern in regexes:
        rx.compile_re2(pattern)
    return DlpAllowlist(regexes=regexes, stopwords=stopwords, target=target, condition=condition)


def _translate_rule(raw: dict[str, Any], global_allowlists: tuple[DlpAllowlist, ...]) -> DlpRule:
    if raw.get("path"):
        raise rx.PatternError("rule requires a file path match; HTTP traffic has no file path")
    if not raw.get("regex"):
        raise rx.PatternError("rule has no content regex")
    regex = translate_go_regex(str(raw["regex"]))
    compiled = rx.compile_re2(regex)
    secret_group = int(raw.get("secretGroup", 0))
    if secret_group > compiled.groups:
        raise rx.PatternError(f"secretGroup {secret_group} exceeds the {compiled.groups} capture groups")
    allowlists = [_translate_allowlist(item, str(raw["id"])) for item in raw.get("allowlists", ())]
    if "allowlist" in raw:  # pre-v8.21 single-table form
        allowlists.append(_translate_allowlist(raw["allowlist"], str(raw["id"])))
    entropy = raw.get("entropy")
    return DlpRule(
        id=str(raw["id"]),
        severity=DEFAULT_SEVERITY,
        category="secret",
        description=str(raw.get("description", "")),
        regex=regex,
        keywords=tuple(str(word).lower() for word in raw.get("keywords", ())),
        entropy=float(entropy) if entropy else None,
        secret_group=secret_group,
        source="gitleaks",
        allowlists=tuple(al for al in allowlists if al is not None) + global_allowlists,
        # gitleaks looks for a rule's keywords anywhere in the fragment, not inside the match.
        keyword_scope="fragment",
        # gitleaks drops a generic rule's finding whose secret has no digit.
        require_digit=bool(entropy) and str(raw["id"]).startswith("generic"),
    )


def import_gitleaks_config(config: dict[str, Any]) -> GitleaksImport:
    result = GitleaksImport()
    global_allowlists: tuple[DlpAllowlist, ...] = ()
    raw_globals = [config["allowlist"]] if "allowlist" in config else []
    raw_globals += list(config.get("allowlists", ()))
    try:
        translated = (_translate_allowlist(item, "global allowlist") for item in raw_globals)
        global_allowlists = tuple(al for al in translated if al is not None)
    except rx.PatternError as exc:
        raise ValueError(f"gitleaks global allowlist: {exc}") from None
    for raw in config.get("rules", ()):
        rule_id = str(raw.get("id", "<missing id>"))
        try:
            result.rules.append(_translate_rule(raw, global_allowlists))
        except rx.PatternError as exc:
            result.skipped.append((rule_id, str(exc)))
    return result


def import_gitleaks(path: str | Path) -> GitleaksImport:
    with open(path, "rb") as handle:
        return import_gitleaks_config(tomllib.load(handle))
