"""json_override_methods reads a large JSON body without building Python's per-object view of it when
the body cannot name `_method` at its top level: that parse held the event loop 3x as long (and an
asyncio worker thread would not help: it holds the GIL throughout). What it finds is what Python's own
parser finds (the reference here: json.loads keeping every key of the top-level object)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from failcore.proxy import overrides
from tests.llm_replay import load_exchanges


def _python_reads(body: bytes) -> list[str]:
    """The `_method` strings of the top-level object as Python's parser reads it, every duplicate."""
    top = json.loads(body, object_pairs_hook=lambda pairs: ("object", pairs))
    if not (isinstance(top, tuple) and top[0] == "object"):
        return []
    return [v.strip().upper() for k, v in top[1] if k == "_method" and isinstance(v, str) and v.strip()]


def _prompts(size: int) -> bytes:
    """Recorded prompts under one object, `size` bytes or more, written by Python's json (`\\u` escapes)."""
    prompts = [json.loads(e["request_body"]) for e in load_exchanges() if e["request_body"]]
    return json.dumps({"batch": prompts * (size // len(json.dumps(prompts)) + 1)}).encode()


class _CountingJson:
    def __init__(self) -> None:
        self.calls = 0

    def loads(self, body: bytes, **kwargs: Any) -> Any:
        self.calls += 1
        return json.loads(body, **kwargs)


def test_a_large_body_with_escapes_and_no_override_is_not_parsed_object_by_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = _prompts(1 << 20)
    assert b"\\u" in body and b"_method" not in body
    counting = _CountingJson()
    monkeypatch.setattr(overrides, "json", counting)
    assert overrides.json_override_methods(body) == [] == _python_reads(body)
    assert counting.calls == 0


@pytest.mark.parametrize(
    "body",
    [
        b'{"\\u005fmethod": "delete"}',
        b'{"_m\\u0065thod": "get", "\\u005f\\u006d\\u0065\\u0074\\u0068\\u006f\\u0064": "delete"}',
        b'{"x": NaN, "\\u005fmethod": "delete"}',  # what orjson refuses: Python's parser reads it
        b'{"nested": {"\\u005fmethod": "delete"}}',  # not at the top: no override
        b'["\\u005fmethod", "delete"]',
        b'{"\\u005fmethod": 1, "\\u005fmethod": " patch "}',
        b'{"\\u005fmethod": "delete"',  # not JSON
    ],
)
def test_what_it_finds_is_what_python_finds(body: bytes) -> None:
    try:
        expected = _python_reads(body)
    except ValueError:
        expected = []
    assert overrides.json_override_methods(body) == expected
