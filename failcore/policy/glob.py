"""Glob translation to RE2 syntax, for request paths (`rules[].path`), model names
(`budgets[].scope.model`) and file paths (`fs.deny`).

RE2 because request paths and model names come from the agent and must not be able to trigger
catastrophic backtracking; the translation itself is pure (compiling `fs.deny` also resolves each
pattern's literal directory part once, so an alias of it is covered).
"""

from __future__ import annotations

import os
from collections.abc import Sequence


class GlobError(ValueError):
    pass


def glob_to_regex(glob: str) -> str:
    """Translate a path glob to RE2 syntax: '*' stays in one segment, '**' crosses '/', '?' is one char."""
    parts: list[str] = []
    index = 0
    while index < len(glob):
        char = glob[index]
        if char == "*":
            end = index
            while end < len(glob) and glob[end] == "*":
                end += 1
            parts.append(".*" if end - index > 1 else "[^/]*")
            index = end
        elif char == "?":
            parts.append("[^/]")
            index += 1
        elif char == "[":
            char_class, index = _translate_class(glob, index)
            parts.append(char_class)
        else:
            parts.append(_regex_literal(char))
            index += 1
    return "".join(parts)


def model_glob_to_regex(glob: str) -> str:
    """Translate a model glob to RE2 syntax: '*' is any run of characters ('/' included, as in
    openai/gpt-4o), '?' one character, '[...]' a class."""
    parts: list[str] = []
    index = 0
    while index < len(glob):
        char = glob[index]
        if char == "*":
            parts.append(".*")
            index += 1
        elif char == "?":
            parts.append(".")
            index += 1
        elif char == "[":
            char_class, index = _translate_class(glob, index, separator=None)
            parts.append(char_class)
        else:
            parts.append(_regex_literal(char))
            index += 1
    return "".join(parts)


def _translate_class(glob: str, start: int, *, separator: str | None = "/") -> tuple[str, int]:
    index = start + 1
    negate = index < len(glob) and glob[index] in "!^"
    if negate:
        index += 1
    body_start = index
    if index < len(glob) and glob[index] == "]":
        index += 1  # a ']' right after '[' is a literal, as in shell globs
    while index < len(glob) and glob[index] != "]":
        index += 1
    if index >= len(glob):
        raise GlobError(
            f"the '[' at character {start + 1} is never closed; "
            "add the missing ']' or write '[[]' to match a literal '['"
        )
    body = glob[body_start:index]
    items: list[str] = []
    position = 0
    while position < len(body):
        if position + 2 < len(body) and body[position + 1] == "-":
            low, high = body[position], body[position + 2]
            if low > high:
                raise GlobError(f"the range '{low}-{high}' is reversed; write '{high}-{low}'")
            items.append(f"{_regex_literal(low)}-{_regex_literal(high)}")
            position += 3
        else:
            items.append(_regex_literal(body[position]))
            position += 1
    if negate:
        # A negated class must not let a single-segment pattern leak into the next segment.
        excluded = _regex_literal(separator) if separator is not None else ""
        return "[^" + "".join(items) + excluded + "]", index + 1
    return "[" + "".join(items) + "]", index + 1


def _regex_literal(char: str) -> str:
    if char.isascii() and char.isalnum():
        return char
    return f"\\x{{{ord(char):x}}}"


# --------------------------------------------------------------------------------------------------
# fs.deny: file path globs (failcore.policy.runtime)
# --------------------------------------------------------------------------------------------------


def _re2_options() -> object:
    import re2

    options = re2.Options()
    options.case_sensitive = False
    return options


def compile_deny(patterns: Sequence[str]) -> object | None:
    """One case-insensitive RE2 regex for the deny globs (each also with its literal directory prefix
    resolved, so `~/.ssh/**` still matches when ~/.ssh is a symlink), or None when there are none."""
    if not patterns:
        return None
    import re2

    regexes: list[str] = []
    for pattern in patterns:
        for variant in deny_variants(pattern):
            regexes.append(glob_to_regex(variant))
            if variant.endswith("/**"):  # the directory itself, not only what is inside it
                regexes.append(glob_to_regex(variant[:-3] or "/"))
    # "(/.*)?": a path matches when it or one of its parent directories does.
    union = "|".join(f"(?:{regex})" for regex in dict.fromkeys(regexes))
    return re2.compile(f"(?:{union})(?:/.*)?", _re2_options())


def deny_variants(pattern: str) -> list[str]:
    """The absolute globs a deny pattern stands for."""
    text = pattern.strip()
    if text.endswith("/") and len(text) > 1:
        text = text.rstrip("/") + "/**"
    if text.startswith("~"):
        text = os.path.expanduser(text)
    if not text.startswith("/"):
        return ["/**/" + text.removeprefix("**/").removeprefix("./")]
    variants = [_normalise_glob(text)]
    # Resolve the part before the first glob character so an alias (symlink) of it is covered too.
    parts = variants[0].split("/")
    literal: list[str] = []
    for part in parts:
        if any(c in part for c in "*?["):
            break
        literal.append(part)
    prefix = "/".join(literal) or "/"
    resolved = os.path.realpath(prefix)
    if resolved != prefix:
        rest = variants[0][len(prefix) :]
        variants.append((resolved.rstrip("/") + rest) if rest else resolved)
    return variants


def _normalise_glob(text: str) -> str:
    """Collapse '//' and '/./'; keep '**' and trailing '/**'."""
    parts = [part for part in text.split("/") if part not in ("", ".")]
    return "/" + "/".join(parts)
