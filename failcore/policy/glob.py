"""Glob translation to RE2 syntax, for request paths (`rules[].path`) and model names
(`budgets[].scope.model`).

RE2 because request paths and model names come from the agent and must not be able to trigger
catastrophic backtracking; the translation itself is pure.
"""

from __future__ import annotations


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
