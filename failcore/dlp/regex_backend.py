"""Thin adapters over the available regex libraries.

Everything is matched on bytes with Latin-1 semantics (one byte = one character) so that RE2 and
Hyperscan agree on what `.`, `\\w` and bounded repeats count, and offsets are byte offsets.

Size: a little over 500 lines: besides the adapters, the analysis of rule patterns the prefilter needs
(match widths, required literals, rewrites Hyperscan accepts) lives here, because it walks the same
`re` parse trees the adapters use to judge backtracking risk.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from collections.abc import Callable, Iterator
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any, Protocol, cast

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


# Pattern analysis is pure (a function of the pattern alone) and a DLP engine build asks for it several
# times per rule (the Hyperscan probe list, the database, the fast paths): computed once per process, and
# what one build used can be saved and preloaded (failcore.dlp.hscache keeps it between runs: parsing
# gitleaks' patterns with Python's `re` parser was most of a warm engine build).
_MEMO_MAX = 8192
_memo: dict[str, dict[str, Any]] = {}
_recording = threading.local()


class AnalysisUse:
    """The analysis results one thread asked for while recording, and how many it had to compute."""

    def __init__(self) -> None:
        self.used: set[tuple[str, str]] = set()
        self.computed = 0


@contextlib.contextmanager
def recording_analysis() -> Iterator[AnalysisUse]:
    use = AnalysisUse()
    previous = getattr(_recording, "use", None)
    _recording.use = use
    try:
        yield use
    finally:
        _recording.use = previous


def _analysis[F: Callable[[str], Any]](function: F) -> F:
    name = function.__name__
    table = _memo.setdefault(name, {})

    @functools.wraps(function)
    def memoized(pattern: str) -> Any:
        use: AnalysisUse | None = getattr(_recording, "use", None)
        if use is not None:
            use.used.add((name, pattern))
        try:
            return table[pattern]
        except KeyError:
            pass
        result = function(pattern)
        if use is not None:
            use.computed += 1
        if len(table) < _MEMO_MAX:
            table[pattern] = result
        return result

    return cast(F, memoized)


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b": value.hex()}
    if isinstance(value, tuple):
        return {"t": [_encode(item) for item in value]}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "b" in value:
            return bytes.fromhex(value["b"])
        return tuple(_decode(item) for item in value["t"])
    return value


def analysis_snapshot(use: AnalysisUse) -> list[list[Any]]:
    """The results `use` recorded, as JSON-ready data: [[function, pattern, result], ...]."""
    snapshot = []
    for name, pattern in sorted(use.used):
        table = _memo[name]
        if pattern in table:
            snapshot.append([name, pattern, _encode(table[pattern])])
    return snapshot


def preload_analysis(snapshot: object) -> bool:
    """Memoize results from `analysis_snapshot()` (of this module's code: the caller keys what it
    stored by it); False, preloading nothing, when the data does not have that shape."""
    if not isinstance(snapshot, list):
        return False
    decoded: list[tuple[str, str, Any]] = []
    try:
        for name, pattern, result in snapshot:
            if name not in _memo or not isinstance(pattern, str):
                return False
            value = _decode(result)
            if not _RESULT_SHAPES[name](value):
                return False  # a damaged or crafted entry: every build would trip over it
            decoded.append((name, pattern, value))
    except (TypeError, ValueError, KeyError):
        return False
    for name, pattern, result in decoded:
        table = _memo[name]
        if len(table) < _MEMO_MAX:
            table.setdefault(pattern, result)
    return True


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _text(value: Any) -> bool:
    return type(value) is str


def _run_bound(value: Any) -> bool:
    return value is None or (
        type(value) is tuple and len(value) == 2 and _count(value[0]) and type(value[1]) is bytes
    )


# What each analysis function returns: a preloaded result of another shape is refused.
_RESULT_SHAPES: dict[str, Callable[[Any], bool]] = {
    "max_match_width": _count,
    "hyperscan_expression": _text,
    "drop_optional_prefix": _text,
    "required_literal_length": _count,
    "without_inline_ignorecase": _text,
    "run_bound": _run_bound,
    "merge_char_alternations": _text,
}


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


# Compiled once per process: a policy's gitleaks import and custom rules compile each pattern to check it,
# and its DLP engine compiles the same patterns again (~0.2 s of CPU for gitleaks' rules). RE2's compiled
# patterns are immutable and safe to share between threads.
@functools.lru_cache(maxsize=4096)
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


@_analysis
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


def _outside_classes(pattern: str, start: int) -> Iterator[tuple[int, str]]:
    """(index, char) of each character from `start` that is neither escaped nor inside a character
    class (nor the `[`/`]` of one): where a `(` or `)` really opens or closes a group."""
    index = start
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
        else:
            yield index, char
        index += 1


def _group_end(pattern: str, open_index: int) -> int:
    """Index just past the group opened at `open_index`, honouring escapes and character classes."""
    depth = 0
    for index, char in _outside_classes(pattern, open_index):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index + 1
    return -1


@_analysis
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


# A character class (or `.`, `\w`…) repeated possibly zero times, greedy or lazy: `[\w.-]{0,50}?`.
_OPTIONAL_ITEM = re.compile(r"(?:\[\^?\]?(?:\\.|[^\]\\])*\]|\\[wsdWSD]|\.)(?:\{0(?:,\d*)?\}|\*|\?)\??")
_GROUP_OPEN = re.compile(r"\((?:\?[a-zA-Z-]*:)?")


def _drop_leading_optional(body: str) -> str:
    while True:
        item = _OPTIONAL_ITEM.match(body)
        if item is None:
            break
        body = body[item.end() :]
    group = _GROUP_OPEN.match(body)
    if group is not None and group.group(0) != "(":  # a non-capturing group: look inside it
        end = _group_end(body, 0)
        if end > 0 and body[end : end + 1] not in ("*", "+", "?", "{"):  # not repeated
            inner = _drop_leading_optional(body[group.end() :])
            body = body[: group.end()] + inner
    return body


@_analysis
def drop_optional_prefix(expression: str) -> str:
    """`expression` without the items in front that may match nothing (`[\\w.-]{0,50}?(?:key)…` ->
    `(?:key)…`), when something that cannot match empty remains; else `expression` unchanged.

    A match of P·R ends exactly where a match of R ends when P can match the empty string, so
    Hyperscan reports the same match ends; the confirm window still spans the full pattern's width.
    Such a prefix in front of the keyword is what makes gitleaks' generic rules slow in Hyperscan.
    """
    flag_prefix = re.match(r"\(\?[a-zA-Z]+\)", expression)
    flags = flag_prefix.group(0) if flag_prefix else ""
    body = expression[len(flags) :]
    stripped = _drop_leading_optional(body)
    if stripped == body:
        return expression
    try:
        low, _high = sre_parse.parse(_python_dialect(flags + stripped)).getwidth()
    except (re.error, OverflowError, RecursionError):
        return expression
    return flags + stripped if low > 0 else expression


def _one_literal_char(op: Any, value: Any) -> bool:
    if op is sre_parse.LITERAL:
        return True
    if op is sre_parse.IN:  # `[Aa]`: one letter in either case
        return (
            all(item is sre_parse.LITERAL for item, _ in value)
            and len({chr(char).lower() for _, char in value}) == 1
        )
    return False


def _required_literal(items: Any) -> int:
    best = run = 0
    for op, value in items:
        if _one_literal_char(op, value):
            run += 1
            best = max(best, run)
            continue
        if op is sre_parse.AT:  # zero-width: `\b`, `^` do not break a literal
            continue
        run = 0
        if op is sre_parse.SUBPATTERN:
            best = max(best, _required_literal(value[-1]))
        elif op is sre_parse.BRANCH:
            best = max(best, min(_required_literal(branch) for branch in value[1]))
        elif op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT) and value[0] >= 1:
            best = max(best, _required_literal(value[2]))
    return best


@_analysis
def required_literal_length(pattern: str) -> int:
    """Length of the longest literal every match must contain (case aside; one of a branch's literals
    counts as the shortest of them). 0 when there is none: Hyperscan then has nothing to anchor on
    and runs an automaton over the whole text. -1 when the pattern cannot be analysed."""
    try:
        return _required_literal(sre_parse.parse(without_inline_ignorecase(pattern)))
    except (re.error, OverflowError, RecursionError):
        return -1


@_analysis
def without_inline_ignorecase(pattern: str) -> str:
    """Go lets `(?i)` appear mid-pattern, Python does not; case changes no width."""
    dialect = _python_dialect(pattern)
    head = "(?i)" if dialect.startswith("(?i)") else ""
    return head + dialect[len(head) :].replace("(?i)", "")


_ALL_BYTES = frozenset(range(256))
_WORD = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
# Per category: what the widest reading matches (Python's `\s` has `\v`, RE2's not) and what the
# narrowest does, whose complement is the widest reading of the negated category.
_CATEGORIES: dict[str, tuple[frozenset[int], frozenset[int]]] = {
    "CATEGORY_DIGIT": (frozenset(b"0123456789"), frozenset(b"0123456789")),
    "CATEGORY_SPACE": (frozenset(b" \t\n\r\f\v"), frozenset(b" \t\n\r\f")),
    "CATEGORY_WORD": (_WORD, _WORD),
}


def _both_cases(chars: set[int] | frozenset[int]) -> frozenset[int]:
    return frozenset(chars) | {ord(chr(char).swapcase()) for char in chars if char < 128}


def _class_bytes(op: Any, value: Any) -> frozenset[int] | None:
    """A superset of the bytes one single-character item can match, whether or not a `(?i)` applies
    and whichever dialect reads it; None when the item is not a single character."""
    if op is sre_parse.ANY:
        return _ALL_BYTES
    if op is sre_parse.LITERAL:
        return _both_cases({value})
    if op is sre_parse.NOT_LITERAL:
        return _ALL_BYTES - {value}
    if op is not sre_parse.IN:
        return None
    if value and value[0][0] is sre_parse.NEGATE:
        # Excluded: only what every reading excludes (no case folding, narrow categories).
        excluded: set[int] = set()
        for item, arg in value[1:]:
            if item is sre_parse.LITERAL:
                excluded.add(arg)
            elif item is sre_parse.RANGE:
                excluded.update(range(arg[0], arg[1] + 1))
            elif item is sre_parse.CATEGORY and str(arg) in _CATEGORIES:
                excluded.update(_CATEGORIES[str(arg)][1])
            elif item is sre_parse.CATEGORY and str(arg).replace("NOT_", "") in _CATEGORIES:
                continue  # excludes `\S`, `\W`, `\D`: assume it excludes nothing (wider)
            else:
                return None
        return _ALL_BYTES - excluded
    members: set[int] = set()
    for item, arg in value:
        if item is sre_parse.LITERAL:
            members.add(arg)
        elif item is sre_parse.RANGE:
            members.update(range(arg[0], arg[1] + 1))
        elif item is sre_parse.CATEGORY and str(arg) in _CATEGORIES:
            members.update(_CATEGORIES[str(arg)][0])
        elif item is sre_parse.CATEGORY and str(arg).replace("NOT_", "") in _CATEGORIES:
            members.update(_ALL_BYTES - _CATEGORIES[str(arg).replace("NOT_", "")][1])
        else:
            return None
    return _both_cases(members)


def _rest_width(items: Any, found: list[Any], repeated: bool) -> int | None:
    """Max width of `items` with its one unbounded single-character repeat counted as empty (that
    repeat's byte set goes in `found`); None when there are several, or other unbounded parts."""
    total = 0
    for op, value in items:
        if op is sre_parse.AT:
            continue
        if _class_bytes(op, value) is not None:
            total += 1
            continue
        if op is sre_parse.SUBPATTERN:
            width = _rest_width(value[-1], found, repeated)
        elif op is sre_parse.BRANCH:
            widths = [_rest_width(branch, found, repeated) for branch in value[1]]
            width = None if None in widths else max(w for w in widths if w is not None)
        elif op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT):
            _low, high, body = value
            if high == sre_parse.MAXREPEAT:
                chars = _class_bytes(*body[0]) if len(body) == 1 else None
                if chars is None or repeated or found:
                    return None
                found.append(chars)
                continue
            inner = _rest_width(body, found, repeated or high > 1)
            width = None if inner is None else inner * high
        else:
            return None
        if width is None:
            return None
        total += width
    return total


@_analysis
def run_bound(pattern: str) -> tuple[int, bytes] | None:
    """For a pattern whose only unbounded part is one repeated character class C (`[a-z0-9+/]{11,}`):
    (W, table), W the most the rest of a match can take, table mapping C's bytes to `a`, others to
    ` `. A match then ends at most W past its C-run and starts at most W before it, so the start of a
    match ending at `e` is bounded by the C-run in front of `e - W` (see `run_bounded_start`).
    None for any other shape."""
    if any(token in pattern for token in ("[[:", "\\p", "\\P", "\\Q", "\\C", "\\x{")):
        return None  # Go syntax Python's parser would read differently
    try:
        parsed = sre_parse.parse(without_inline_ignorecase(pattern))
    except (re.error, OverflowError, RecursionError):
        return None
    found: list[frozenset[int]] = []
    rest = _rest_width(parsed, found, False)
    if rest is None or not found:
        return None
    table = bytes(0x61 if byte in found[0] else 0x20 for byte in range(256))
    return rest, table


def run_bounded_start(buffer: bytes, end: int, rest: int, table: bytes) -> int:
    """A lower bound of where a match ending at `end` starts, for a pattern with `run_bound` (W, table):
    the C-run holding the last byte of its repeat reaches back from at least `end - W - 1`."""
    probe = end - rest - 1
    if probe < 0:
        return 0
    if table[buffer[probe]] != 0x61:
        return max(0, probe + 1 - rest)
    step = 256
    low = probe
    while low > 0:
        low = max(0, probe + 1 - step)
        gap = buffer[low : probe + 1].translate(table).rfind(b" ")
        if gap >= 0:
            return max(0, low + gap + 1 - rest)
        step *= 4
    return 0


# An alternation is merged into one class repeat only when each branch can already be this long: the
# merged repeat then reports no more match ends per run of its characters than the branches did.
MERGE_MIN_UPPER = 100


def _sequence_shape(items: Any) -> tuple[set[int], int, float] | None:
    """(bytes, min length, max length) of a branch made only of character classes and repeats of
    single characters; None for any other shape, or one with a literal character of its own."""
    chars: set[int] = set()
    low = 0
    high = 0.0
    for op, value in items:
        single = _class_bytes(op, value)
        if single is not None:
            if len(single) <= 2:  # a literal (in either case): keep the branch's anchor
                return None
            chars |= single
            low += 1
            high += 1
            continue
        if op not in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT) or len(value[2]) != 1:
            return None
        body = _class_bytes(*value[2][0])
        if body is None:
            return None
        chars |= body
        low += value[0]
        high += float("inf") if value[1] == sre_parse.MAXREPEAT else value[1]
    return chars, low, high


def _class_text(chars: set[int]) -> str:
    ranges: list[tuple[int, int]] = []
    for char in sorted(chars):
        if ranges and char == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], char)
        else:
            ranges.append((char, char))
    return "[" + "".join(f"\\x{a:02x}" if a == b else f"\\x{a:02x}-\\x{b:02x}" for a, b in ranges) + "]"


@_analysis
def merge_char_alternations(expression: str) -> str:
    """`expression` with each group that alternates long runs of single characters
    (`([\\w.=-]{10,150}|[a-z0-9][a-z0-9+/]{11,}={0,3})`) replaced by one repeat of their union
    (`(?:[\\w.=+/-]{10,})`): it accepts every string the group accepts, so a pattern holding it
    reports every match end the original reports (and maybe more, which the confirm step drops).
    Hyperscan runs such a repeat much faster than the alternation."""
    if any(token in expression for token in ("[[:", "\\p", "\\P", "\\Q", "\\C", "\\x{")):
        return expression
    index = 0
    while True:
        index = _next_group(expression, index)
        if index < 0:
            return expression
        end = _group_end(expression, index)
        if end < 0:
            return expression
        opener = re.match(r"\((?:\?[a-zA-Z-]*:)?", expression[index:])
        assert opener is not None
        inner = expression[index + opener.end() : end - 1]
        replacement = _merged_group(inner) if not inner.startswith("?") else None
        if replacement is not None:
            expression = expression[:index] + replacement + expression[end:]
            end = index + len(replacement)
            index = end
        else:
            index += 1


def _next_group(pattern: str, start: int) -> int:
    """Index of the next `(` opening a group from `start`, outside escapes and classes; -1 if none."""
    return next((index for index, char in _outside_classes(pattern, start) if char == "("), -1)


def _merged_group(inner: str) -> str | None:
    try:
        parsed = sre_parse.parse(without_inline_ignorecase(inner))
    except (re.error, OverflowError, RecursionError):
        return None
    if len(parsed) != 1 or parsed[0][0] is not sre_parse.BRANCH:
        return None
    shapes = [_sequence_shape(branch) for branch in parsed[0][1][1]]
    if any(shape is None or shape[2] < MERGE_MIN_UPPER for shape in shapes):
        return None
    chars: set[int] = set().union(*(shape[0] for shape in shapes if shape is not None))
    low = min(shape[1] for shape in shapes if shape is not None)
    if low < 1:
        return None
    return f"(?:{_class_text(chars)}{{{low},}})"
