"""Override files (`--override N=FILE`): a response written by hand to answer one step of a replay."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from failcore.replay.canned import CannedResponse, replay_headers


def _load_document(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        return orjson.loads(text)
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(text)


OVERRIDE_KEYS_HELP = (
    "status (int, default 200), reason (text), headers (mapping or [name, value] pairs), and either "
    "body (text, or any JSON value, sent as JSON) or sse (list of event strings)"
)


def load_override(path: Path) -> CannedResponse:
    """A response file: `status`, `reason`, `headers` (mapping or [name, value] pairs) and either
    `body` (text, or any JSON value, sent as JSON) or `sse` (event strings, one chunk each)."""
    try:
        doc = _load_document(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"override {path}: {e}") from None
    except Exception as e:  # ruamel's parser errors share no base class worth naming
        raise ValueError(f"override {path}: {type(e).__name__}: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"override {path}: expected a mapping with {OVERRIDE_KEYS_HELP}")
    unknown = set(doc) - {"status", "reason", "headers", "body", "sse"}
    if unknown:
        raise ValueError(f"override {path}: unknown keys {sorted(unknown)}; allowed: {OVERRIDE_KEYS_HELP}")
    status = doc.get("status", 200)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
        raise ValueError(f"override {path}: status must be an integer 100..999")
    raw_headers = doc.get("headers") or {}
    pairs = list(raw_headers.items()) if isinstance(raw_headers, dict) else list(raw_headers)
    if not all(isinstance(p, list | tuple) and len(p) == 2 for p in pairs):
        raise ValueError(f"override {path}: headers must be a mapping or a list of [name, value]")
    headers = list(replay_headers([[str(k), str(v)] for k, v in pairs]))
    names = {name.lower() for name, _ in headers}
    if "sse" in doc and "body" in doc:
        raise ValueError(f"override {path}: give body or sse, not both")
    chunks: tuple[int, ...] | None = None
    if "sse" in doc:
        events = doc["sse"]
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            raise ValueError(f"override {path}: sse must be a list of strings")
        pieces = [(e.rstrip("\n") + "\n\n").encode() for e in events]
        body = b"".join(pieces)
        chunks = tuple(len(p) for p in pieces)
        content_type = "text/event-stream"
    else:
        value = doc.get("body", "")
        if isinstance(value, str):
            body, content_type = value.encode(), "text/plain; charset=utf-8"
        else:
            body, content_type = orjson.dumps(value), "application/json"
    if "content-type" not in names:
        headers.append(("content-type", content_type))
    return CannedResponse(status, str(doc.get("reason") or ""), tuple(headers), body, chunks)


def parse_overrides(specs: Sequence[str]) -> dict[int, tuple[Path, CannedResponse]]:
    out: dict[int, tuple[Path, CannedResponse]] = {}
    for spec in specs:
        number, sep, file = spec.partition("=")
        if not sep or not number.strip().isdigit() or int(number) < 1 or not file:
            raise ValueError(f"override {spec!r}: expected N=FILE with N >= 1")
        path = Path(file).expanduser()
        out[int(number)] = (path, load_override(path))
    return out
