"""The policy fields whose content another module validates: `dlp.import_gitleaks` (the gitleaks
importer), `dlp.custom` (the custom DLP rule parser), `dlp.rule_actions` ids (known built-in, custom and
imported rules) and `prices` (the price table). Each reader reports that module's complaint at the
line and column of the entry it concerns.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from failcore.policy.model import Position
from failcore.policy.nodes import describe, item_pos, key_pos, quote, to_plain, value_pos
from failcore.policy.validate import FAILED, Here, Invalid
from failcore.shipped import BUNDLED_GITLEAKS

if TYPE_CHECKING:
    from failcore.dlp.model import DlpRule

# The modules that read these fields (failcore.dlp: ~0.1 s, failcore.llm: ~0.1 s of CPU here) are
# imported by the readers, so loading a policy without those fields (`failcore run`'s start) skips them.
GitleaksResult = tuple[Path, tuple["DlpRule", ...], tuple[tuple[str, str], ...]]
# Marks an import_gitleaks that failed: rule ids it would have defined are unknown, so none are checked.
GITLEAKS_FAILED: GitleaksResult = (Path(), (), ())

_CUSTOM_RULE_FIELD = re.compile(r"^custom DLP rule .*?: (?:unknown field\(s\) )?([a-z_]+)")


def read_gitleaks(value: object, here: Here, key: object, label: str) -> GitleaksResult:
    from failcore.dlp.gitleaks import import_gitleaks

    position = value_pos(here.node, key)
    if not isinstance(value, str) or not value.strip():
        here.add(
            position,
            f"{label}: expected bundled or the path of a gitleaks.toml file, got {describe(value)}",
        )
        return GITLEAKS_FAILED
    if value.strip() == "bundled":
        path = BUNDLED_GITLEAKS
    else:
        path = (here.base_dir / Path(value.strip()).expanduser()).resolve()
    try:
        imported = import_gitleaks(path)
    except OSError as exc:
        here.add(
            position,
            f"{label}: cannot read {path}: {exc.strerror or exc} "
            "(relative paths are resolved from the policy file's directory)",
        )
        return GITLEAKS_FAILED
    except tomllib.TOMLDecodeError as exc:
        here.add(position, f"{label}: {path} is not valid TOML: {exc}")
        return GITLEAKS_FAILED
    # The importer trusts the file's structure: a table where a list belongs surfaces as one of these.
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        here.add(position, f"{label}: {path} is not a usable gitleaks config: {exc}")
        return GITLEAKS_FAILED
    return path, tuple(imported.rules), tuple(imported.skipped)


def read_custom(value: object, here: Here, key: object, label: str) -> tuple[tuple[DlpRule, ...], set[str]]:
    """Parsed custom rules, plus every id written (so rule_actions does not also flag a broken rule)."""
    from failcore.dlp.custom import parse_custom_rules

    if not isinstance(value, CommentedSeq):
        here.add(
            value_pos(here.node, key),
            f"{label}: expected a list of rules (each starts with '- id: ...'), got {describe(value)}",
        )
        return (), set()
    rules: list[DlpRule] = []
    ids: set[str] = set()
    taken = _builtin_rule_ids()
    for index, item in enumerate(value):
        rule_id = item.get("id") if isinstance(item, CommentedMap) else None
        if isinstance(rule_id, str):
            if rule_id in ids or rule_id in taken:
                owner = "another custom rule" if rule_id in ids else "a built-in rule"
                here.add(
                    value_pos(item, "id"),
                    f"{here.prefix}custom rule {index + 1}: id {quote(rule_id)} is already "
                    f"used by {owner}; give each rule a unique id",
                )
                continue
            ids.add(rule_id)
        try:
            rules.extend(parse_custom_rules([to_plain(item)], "policy"))
        except ValueError as exc:
            here.add(
                _custom_rule_problem_pos(value, index, str(exc)),
                f"{here.prefix}custom rule {index + 1}: {exc}",
            )
    return tuple(rules), ids


def _custom_rule_problem_pos(sequence: CommentedSeq, index: int, message: str) -> Position:
    """The field a parse_custom_rules message names, else the rule itself."""
    item = sequence[index]
    match = _CUSTOM_RULE_FIELD.match(message)
    if isinstance(item, CommentedMap) and match and match.group(1) in item:
        key = match.group(1)
        return key_pos(item, key) if "unknown field" in message else value_pos(item, key)
    return item_pos(sequence, index)


def _builtin_rule_ids() -> frozenset[str]:
    from failcore.dlp.rules import builtin_rules

    return frozenset(rule.id for rule in builtin_rules())


def severity_key(key: object, here: Here) -> object:
    from failcore.dlp.model import SEVERITIES

    if not isinstance(key, str) or key.strip().lower() not in SEVERITIES:
        return Invalid(f"{describe(key)} is not a severity; use {', '.join(SEVERITIES)}")
    return key.strip().lower()


def rule_id_key(key: object, here: Here) -> object:
    """A DLP rule id in rule_actions: text, and a built-in, custom or imported rule's id (unless the
    gitleaks import failed, when the ids it would have defined are unknown and none is checked)."""
    if not isinstance(key, str):
        return Invalid(f"rule ids are text, got {describe(key)}")
    gitleaks = here.values.get("import_gitleaks")
    if gitleaks is GITLEAKS_FAILED:
        return key
    imported_ids = {rule.id for rule in gitleaks[1]} if isinstance(gitleaks, tuple) else set()
    _, custom_ids = here.values.get("custom") or ((), set())
    known_ids = _builtin_rule_ids() | custom_ids | imported_ids
    if key not in known_ids:
        close = difflib.get_close_matches(key, sorted(known_ids), n=3)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        return Invalid(
            f"unknown DLP rule id {quote(key)}; it is not a built-in, custom or imported rule.{hint}"
        )
    return key


def read_prices(value: object, here: Here, key: object, label: str) -> object:
    from failcore.llm.prices import load_price_table

    if not isinstance(value, CommentedMap):
        here.add(
            value_pos(here.node, key),
            f"{label}: expected a mapping of model id to prices such as "
            f"'my-model: {{input: 3.0, output: 12.0}}', got {describe(value)}",
        )
        return FAILED
    overrides = to_plain(value)
    assert isinstance(overrides, dict)
    try:
        load_price_table(overrides=overrides)
    except ValueError as combined:
        _report_price_problems(here, key, value, overrides, combined)
    return overrides


def _report_price_problems(
    here: Here, key: object, node: CommentedMap, overrides: dict, combined: ValueError
) -> None:
    """Price entries are retried one by one so every bad entry is reported at its own line."""
    from failcore.llm.prices import load_price_table

    found = False
    for model, plain_model in zip(node, overrides, strict=True):
        try:
            load_price_table(overrides={plain_model: overrides[plain_model]})
        except ValueError as exc:
            found = True
            here.add(_price_problem_pos(node, model, str(exc)), str(exc))
    if not found:
        here.add(key_pos(here.node, key), str(combined))


def _price_problem_pos(node: CommentedMap, model: object, message: str) -> Position:
    entry = node[model]
    match = re.search(r" field '([a-z_]+)'", message.replace(repr(model), "", 1))
    if isinstance(entry, CommentedMap) and match:
        key = match.group(1)
        if key in entry:
            return key_pos(entry, key) if message.endswith("unknown field") else value_pos(entry, key)
        return value_pos(node, model)
    return key_pos(node, model)
