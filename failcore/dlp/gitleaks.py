"""Import gitleaks TOML rule sets (https://github.com/gitleaks/gitleaks, MIT) as DLP rules.

gitleaks scans files; failcore scans HTTP traffic, so anything keyed on a file path cannot apply and
is reported as skipped. Patterns are Go RE2 syntax; the few constructs the byte-level engines read
differently are rewritten, and every pattern must compile with RE2 (linear time) to be loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from failcore.dlp import hscache
from failcore.dlp import model as model_module
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
    """The import of a gitleaks file; from failcore's on-disk cache when it holds this exact content's.

    Parsing the TOML and checking every pattern with RE2 was most of a policy load (~0.1 s of CPU for
    gitleaks' bundled 217 rules): the cached import skips both, and the DLP engine compiles the same
    patterns as it builds (off the event loop). An entry is keyed by the file's bytes, this module's and
    the rule model's sources, the regex bindings and the Python version, so it is only ever the result
    this code gave for this file; a damaged or ill-shaped one is discarded and the file imported again."""
    with open(path, "rb") as handle:
        data = handle.read()
    key = _cache_key(data)
    cached = _cached_import(key)
    if cached is not None:
        return cached
    result = import_gitleaks_config(tomllib.loads(data.decode("utf-8")))
    _store_import(key, result)
    return result


@functools.cache
def _cache_code() -> bytes:
    digest = hashlib.sha256()
    try:
        for module in (__file__, model_module.__file__, rx.__file__):
            digest.update(Path(module).read_bytes())
    except OSError:  # no source to key by: a key no other process shares, so no entry is reused
        digest.update(os.urandom(32))
    digest.update(f"{sys.version}\x00{_re2_build()}".encode())
    return digest.digest()


def _re2_build() -> str:
    """Which google-re2 checks the patterns (it has no version attribute): its extension module."""
    try:
        import re2._re2 as binding

        stat = os.stat(binding.__file__)
    except (ImportError, OSError):
        return os.urandom(16).hex()
    return f"{binding.__file__}\x00{stat.st_size}\x00{stat.st_mtime_ns}"


def _cache_key(data: bytes) -> bytes:
    return hscache.entry_key("gitleaks-import", _cache_code(), [data])


def _store_import(key: bytes, result: GitleaksImport) -> None:
    if not hscache.enabled():
        return
    allowlists: dict[DlpAllowlist, int] = {}
    rules = []
    for rule in result.rules:
        fields = {f.name: getattr(rule, f.name) for f in dataclasses.fields(rule)}
        fields["allowlists"] = [allowlists.setdefault(al, len(allowlists)) for al in rule.allowlists]
        rules.append(fields)
    shared = [dataclasses.asdict(al) for al in allowlists]
    payload = {"rules": rules, "allowlists": shared, "skipped": result.skipped}
    hscache.write_entry(key, orjson.dumps(payload))


def _cached_import(key: bytes) -> GitleaksImport | None:
    payload = hscache.read_entry(key)
    if payload is None:
        return None
    try:
        entry = orjson.loads(payload)
        shared = [_allowlist(item) for item in entry["allowlists"]]
        rules = [_rule(item, shared) for item in entry["rules"]]
        skipped = [(str(rule_id), str(reason)) for rule_id, reason in entry["skipped"]]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
        hscache.discard_entry(key)
        return None
    return GitleaksImport(rules, skipped)


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError("expected a list of strings")
    return tuple(value)


def _allowlist(item: dict[str, Any]) -> DlpAllowlist:
    if not isinstance(item["target"], str) or not isinstance(item["condition"], str):
        raise TypeError("allowlist target and condition are strings")
    return DlpAllowlist(
        _strings(item["regexes"]), _strings(item["stopwords"]), item["target"], item["condition"]
    )


_RULE_STRINGS = ("id", "severity", "category", "description", "regex", "source", "keyword_scope")


def _rule(item: dict[str, Any], shared: list[DlpAllowlist]) -> DlpRule:
    if not all(isinstance(item[name], str) for name in _RULE_STRINGS):
        raise TypeError("rule fields of the wrong type")
    entropy, secret_group, validator = item["entropy"], item["secret_group"], item["validator"]
    if entropy is not None and not isinstance(entropy, int | float):
        raise TypeError("entropy")
    if type(secret_group) is not int or not isinstance(item["require_digit"], bool):
        raise TypeError("secret_group, require_digit")
    if validator is not None and not isinstance(validator, str):
        raise TypeError("validator")
    indexes = item["allowlists"]
    if not isinstance(indexes, list) or not all(type(i) is int and i >= 0 for i in indexes):
        raise TypeError("allowlists")
    return DlpRule(
        **{name: item[name] for name in _RULE_STRINGS},
        keywords=_strings(item["keywords"]),
        validator=validator,
        entropy=float(entropy) if entropy is not None else None,
        secret_group=secret_group,
        allowlist_regexes=_strings(item["allowlist_regexes"]),
        allowlist_stopwords=_strings(item["allowlist_stopwords"]),
        allowlists=tuple(shared[i] for i in indexes),
        require_digit=item["require_digit"],
    )
