"""What policy tests share: the problems a policy text is refused with, and a check of their positions
and messages."""

from __future__ import annotations

import textwrap

import pytest

from failcore.policy import PolicyError, parse_policy


def problems_of(text: str) -> list[tuple[int, int, str]]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(textwrap.dedent(text), "test.yaml")
    return [(p.line, p.column, p.message) for p in caught.value.problems]


def assert_problems(text: str, expected: list[tuple[int, int, str]]) -> None:
    found = problems_of(text)
    assert [(line, column) for line, column, _ in found] == [
        (line, column) for line, column, _ in expected
    ], found
    for (_, _, message), (_, _, fragment) in zip(found, expected, strict=True):
        assert fragment in message, (fragment, message)
