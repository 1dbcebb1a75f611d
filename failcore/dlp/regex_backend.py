"""Thin adapters over the available regex libraries.

Everything is matched on bytes with Latin-1 semantics (one byte = one character) so that RE2 and
Hyperscan agree on what `.`, `\\w` and bounded repeats count, and offsets are byte offsets.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any, Protocol

try:
    import re2 as _re2
except ImportError:  # pragma: no cover - exercised only on hosts without google-re2
    _re2 = None


# Rules whose matches can be longer than this are confirmed from the start of the text instead of a window.
UNBOUNDED_WIDTH = 1 << 20


class PatternError(ValueError):
    """A pattern the linear-time engines cannot run."""


class MatchLike(Protocol):
    def span(self, group: int = 0) -> tuple[int, int]: ...
    def group(self, group: int = 0) -> Any: ...


class CompiledPattern(Protocol):
    groups: int

    def finditer(self, text: bytes, pos: int = 0, endpos: int = ...) -> Iterator[MatchLike]: ...


def re2_available() -> bool:
    return _re2 is not None


@functools.cache
def hyperscan_module() -> Any:
    """The hyperscan module (None when it is not installed), imported when first needed: a policy
    without DLP never loads it."""
    try:
        import hyperscan
    except ImportError:  # pragma: no cover - exercised only on hosts without hyperscan
        return None
    return hyperscan


def hyperscan_available() -> bool:
    return hyperscan_module() is not None


def _re2_options() -> Any:
    options = _re2.Options()
    options.log_errors = False
    options.encoding = _re2.Options.Encoding.LATIN1
    return options


def pattern_bytes(pattern: str) -> bytes:
    if not pattern.isascii():
        raise PatternError("non-ASCII characters in a pattern are not supported (byte-level matching)")
    return pattern.encode("ascii")


def compile_re2(pattern: str) -> CompiledPattern:
    if _re2 is None:
        raise PatternError("google-re2 is not installed")
    try:
        return _re2.compile(pattern_bytes(pattern), _re2_options())
    except _re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PatternError(f"RE2 cannot compile the pattern: {detail}") from None


def _python_dialect(pattern: str) -> str:
    # Go/RE2 spell end-of-text as \z; Python spells it \Z.
    return re.sub(r"(?<!\\)((?:\\\\)*)\\z", r"\1\\Z", pattern)


def _contains_repeat_or_branch(items: Any) -> bool:
    """True when the body can match in more than one way; fixed counts and `?` are harmless."""
    for op, value in items:
        if op is sre_parse.BRANCH:
            return True
        if op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT):
            low, high, body = value
            if not (low == high or high <= 1) or _contains_repeat_or_branch(body):
                return True
        if op is sre_parse.SUBPATTERN and _contains_repeat_or_branch(value[-1]):
            return True
    return False


def _backtracking_risk(items: Any) -> str | None:
    """Why a parsed pattern could backtrack super-linearly in Python `re`, or None when it cannot."""
    for op, value in items:
        if op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT):
            _low, high, body = value
            if high > 1 and _contains_repeat_or_branch(body):
                return "nested quantifier or quantified alternation"
            inner = _backtracking_risk(body)
            if inner:
                return inner
        elif op is sre_parse.SUBPATTERN:
            inner = _backtracking_risk(value[-1])
            if inner:
                return inner
        elif op is sre_parse.BRANCH:
            for branch in value[1]:
                inner = _backtracking_risk(branch)
                if inner:
                    return inner
        elif op is sre_parse.GROUPREF or op is sre_parse.ASSERT or op is sre_parse.ASSERT_NOT:
            return "backreference or lookaround"
    return None


def compile_python_safe(pattern: str) -> CompiledPattern:
    """Last-resort compile with Python `re`, refusing shapes that can backtrack catastrophically."""
    dialect = _python_dialect(pattern)
    try:
        parsed = sre_parse.parse(dialect)
        compiled = re.compile(dialect.encode("ascii"))
    except (re.error, UnicodeEncodeError) as exc:
        raise PatternError(f"Python re cannot compile the pattern: {exc}") from None
    risk = _backtracking_risk(parsed)
    if risk:
        raise PatternError(f"refused on the backtracking fallback engine: {risk}")
    return compiled


def max_match_width(pattern: str) -> int:
    """Upper bound of a match's length in bytes; UNBOUNDED_WIDTH when unknown or unbounded."""
    try:
        _low, high = sre_parse.parse(_python_dialect(pattern)).getwidth()
    except (re.error, OverflowError, RecursionError):
        return UNBOUNDED_WIDTH
    return high if high < UNBOUNDED_WIDTH else UNBOUNDED_WIDTH


def escaped_literal(literal: bytes) -> str:
    """A literal as a pattern: every byte that is not an ASCII letter or digit written as `\\xHH`."""
    return "".join(
        chr(byte) if chr(byte).isascii() and chr(byte).isalnum() else f"\\x{byte:02x}" for byte in literal
    )


def literal_alternation(literals: list[bytes]) -> str:
    """A case-insensitive RE2 alternation of literals, longest first so longer keywords win."""
    escaped = [escaped_literal(lit) for lit in sorted(set(literals), key=len, reverse=True)]
    return "(?i)(?:" + "|".join(escaped) + ")"


def _group_end(pattern: str, open_index: int) -> int:
    """Index just past the group opened at `open_index`, honouring escapes and character classes."""
    depth = 0
    index = open_index
    in_class = False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            if pattern[index + 1 : index + 2] == "]":
                index += 1
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return -1


def hyperscan_expression(pattern: str) -> str:
    """The pattern Hyperscan prefilters with: a leading `(?:^|...)` context group is dropped.

    Hyperscan only has to report candidate match ends. Dropping a leading group keeps every end offset
    of the full pattern (a superset), and such context groups in front of a bounded repeat are what make
    Hyperscan slow; RE2 re-checks the full pattern on the window anyway.
    """
    flags = ""
    body = pattern
    flag_prefix = re.match(r"\(\?[a-zA-Z]+\)", body)
    if flag_prefix:
        flags, body = flag_prefix.group(0), body[flag_prefix.end() :]
    if not body.startswith("(?:^|"):
        return pattern
    end = _group_end(body, 0)
    if end <= 0 or end == len(body) or body[end : end + 1] in ("*", "+", "?", "{"):
        return pattern
    return flags + body[end:]
