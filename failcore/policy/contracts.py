"""A tool's declared output (json or text) against what it returned: the `tools.<name>.output` contracts
of the runtime API. A pure function over a frozen contract."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

OUTPUT_KINDS: tuple[str, ...] = ("json", "text")


@dataclass(frozen=True, slots=True)
class ToolContract:
    """What a tool declares it returns: `json` (a dict or list, or text holding a JSON object or array)
    or `text`."""

    output: Literal["json", "text"]


def output_kind(result: object) -> str:
    """ "json" (a dict, list or tuple, a JSON scalar, or text / bytes holding a JSON object or array),
    "text" (other text, or any other object) or "none"."""
    if result is None:
        return "none"
    if isinstance(result, (dict, list, tuple, bool, int, float)):
        return "json"
    if isinstance(result, (bytes, bytearray, memoryview)):
        try:
            result = bytes(result).decode("utf-8")
        except UnicodeDecodeError:
            return "text"
    if isinstance(result, str):
        stripped = result.strip()
        if stripped[:1] in ("{", "[") and stripped[-1:] in ("}", "]"):
            try:
                json.loads(stripped)
            except ValueError:
                return "text"
            return "json"
        return "text"
    return "text"


def check_output(contract: ToolContract | None, result: object) -> dict | None:
    """None when there is no contract or the result keeps it; else the `contract` block of the tool
    event: {"expected", "got", "drift": True}."""
    if contract is None:
        return None
    got = output_kind(result)
    if got == contract.output:
        return None
    return {"expected": contract.output, "got": got, "drift": True}
