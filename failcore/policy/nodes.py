"""YAML nodes as the validator sees them: where a key, value or item stands (1-based line, column) and how a
value is described in a problem message; plus the list every problem of one load is collected in.
"""

from __future__ import annotations

import difflib
import json

from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.scalarbool import ScalarBoolean

from failcore.policy.model import PolicyProblem, Position


class Problems:
    """Every problem of one load, in the order found (sorted by position when reported)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[PolicyProblem] = []

    def add(self, position: Position, message: str) -> None:
        self.items.append(PolicyProblem(self.source, position[0], position[1], message))

    def __len__(self) -> int:
        return len(self.items)


def key_pos(mapping: CommentedMap, key: object) -> Position:
    line, column = mapping.lc.key(key)
    return line + 1, column + 1


def value_pos(mapping: CommentedMap, key: object) -> Position:
    # ruamel reports an empty value at the start of whatever follows it, which misleads; use the key.
    if mapping[key] is None:
        return key_pos(mapping, key)
    line, column = mapping.lc.value(key)
    return line + 1, column + 1


def item_pos(sequence: CommentedSeq, index: int) -> Position:
    line, column = sequence.lc.item(index)
    return line + 1, column + 1


def node_pos(node: CommentedMap | CommentedSeq) -> Position:
    return node.lc.line + 1, node.lc.col + 1


def quote(text: str, limit: int = 60) -> str:
    clipped = text if len(text) <= limit else text[:limit] + "..."
    return json.dumps(clipped, ensure_ascii=False)


def is_bool(value: object) -> bool:
    return isinstance(value, (bool, ScalarBoolean))


def is_int(value: object) -> bool:
    return isinstance(value, int) and not is_bool(value)


def describe(value: object) -> str:
    if value is None:
        return "an empty value"
    if is_bool(value):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {quote(value)}"
    if isinstance(value, CommentedSeq):
        return "a list"
    if isinstance(value, CommentedMap):
        return "a mapping"
    if isinstance(value, TaggedScalar):
        return f"a value tagged {value.tag}"
    return f"a {type(value).__name__} value"


def unknown_key_message(key: str, allowed: tuple[str, ...], where: str) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f' Did you mean "{close[0]}"?' if close else ""
    return f"unknown key {quote(key)} {where}.{hint} Allowed keys: {', '.join(allowed)}"


def to_plain(value: object) -> object:
    """ruamel's round-trip types as plain Python values, so nothing downstream sees YAML node classes."""
    if isinstance(value, dict):
        return {to_plain(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_plain(item) for item in value]
    if is_bool(value):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value
