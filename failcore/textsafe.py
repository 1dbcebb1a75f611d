"""Recorded content is hostile: show it literally, never let a terminal or rich interpret it."""

from __future__ import annotations

import re

from rich.text import Text

# C0 and C1 controls (ESC starts ANSI sequences; CSI 0x9b does too on some terminals), DEL, and
# bidi overrides that can make text read differently from what it is.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# _UNSAFE plus \t \n \r: text without any of these is returned as it is (the common case, one scan).
_ANY_CHANGE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    ch = match.group(0)
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object, *, keep_newlines: bool = False) -> str:
    s = "" if value is None else str(value)
    if _ANY_CHANGE.search(s) is None:
        return s
    if not keep_newlines:
        s = s.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return _UNSAFE.sub(_escape, s)


def safe_text(value: object, style: str = "", *, keep_newlines: bool = False) -> Text:
    """A rich Text that shows `value` as-is: markup is not parsed, control characters are escaped."""
    return Text(printable(value, keep_newlines=keep_newlines), style=style)
