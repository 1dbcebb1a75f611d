"""How the runtime's events read (kinds tool, fs, exec, connect: RUNTIME_SPEC / schema v2), for every
view: the terminal tables, the viewer, the HTML report and `diff`.

Pure functions over recorded events that return plain strings; recorded values are hostile, so every
caller shows them through failcore.textsafe (terminal) or the report's autoescape, never as markup.
A field of the wrong type (a line failcore did not write) reads as missing, never raises.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import orjson

RUNTIME_KINDS: Final = ("tool", "fs", "exec", "connect")
EFFECT_KINDS: Final = ("fs", "exec", "connect")
# The short label a narrow column shows for each kind (the viewer's 4-cell method column).
KIND_LABELS: Final = {"tool": "tool", "fs": "fs", "exec": "exec", "connect": "conn"}
ARGS_LIMIT: Final = 80
_EMPTY: Final[dict[str, Any]] = {}


def is_runtime(ev: dict[str, Any]) -> bool:
    return ev.get("kind") in RUNTIME_KINDS


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else _EMPTY


def _str(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def compact_json(value: object) -> str:
    """One line of JSON (keys in recorded order); a value orjson cannot write reads as its repr."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


def tool_name(ev: dict[str, Any]) -> str:
    return _str(_dict(ev.get("tool")).get("name") or ev.get("action"))


def tool_args(ev: dict[str, Any]) -> object:
    return _dict(ev.get("tool")).get("args")


def _short_json(value: object, limit: int) -> str:
    """JSON of `value` cut to about `limit` characters; a long string is cut before it is encoded, so a
    megabyte argument costs what a short one does (the viewer labels every row with this)."""
    if isinstance(value, str) and len(value) > limit:
        return compact_json(value[:limit]) + "…"
    return clip(compact_json(value), limit)


def args_summary(args: object, limit: int = ARGS_LIMIT) -> str:
    """`key=value, …` of a tool call's (already redacted and masked) arguments, at most `limit` chars."""
    if isinstance(args, dict):
        parts: list[str] = []
        size = 0
        for key, value in args.items():
            part = f"{key}={_short_json(value, limit)}"
            parts.append(part)
            size += len(part) + 2
            if size > limit:
                break
        text = ", ".join(parts)
    elif args is None:
        text = ""
    else:
        text = _short_json(args, limit)
    return clip(text, limit)


def args_hash(args: object) -> str:
    """A short digest of the arguments as recorded, independent of key order: the same call made twice
    hashes the same (what `diff` compares)."""
    try:
        canonical = orjson.dumps(args, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        canonical = repr(args).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def effects(ev: dict[str, Any]) -> dict[str, int]:
    """A tool event's effect counts (fs, exec, connect, blocked); ints only."""
    counts = _dict(_dict(ev.get("tool")).get("effects"))
    return {k: v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)}


_EFFECT_NAMES: Final = (*EFFECT_KINDS, "blocked")


def effects_text(ev: dict[str, Any]) -> str:
    """`fs 2 exec 1 blocked 1` (zero counts left out), empty when the call had no effect."""
    return _effects_of(_dict(ev.get("tool")))


def _effects_of(tool: dict[str, Any]) -> str:
    counts = tool.get("effects")
    if not isinstance(counts, dict):
        return ""
    shown = []
    for name in _EFFECT_NAMES:
        n = counts.get(name)
        if n and n.__class__ is int:
            shown.append(f"{name} {n}")
    return " ".join(shown)


def contract_drift(ev: dict[str, Any]) -> str:
    """`expected json, got text` when the tool's output contract drifted, else empty."""
    return _drift_of(_dict(ev.get("tool")))


def _drift_of(tool: dict[str, Any]) -> str:
    contract = tool.get("contract")
    if not isinstance(contract, dict) or not contract.get("drift"):
        return ""
    return f"expected {_str(contract.get('expected')) or '?'}, got {_str(contract.get('got')) or '?'}"


def result_summary(ev: dict[str, Any]) -> str:
    result = _dict(_dict(ev.get("tool")).get("result"))
    kind = _str(result.get("type"))
    summary = _str(result.get("summary"))
    return f"{kind}: {summary}" if kind and summary else kind or summary


def fs_path(ev: dict[str, Any]) -> str:
    return _str(_dict(ev.get("fs")).get("path"))


def fs_op(ev: dict[str, Any]) -> str:
    fs = _dict(ev.get("fs"))
    return _str(fs.get("op") or _str(ev.get("action")).removeprefix("fs."))


def exec_program(ev: dict[str, Any]) -> str:
    return _str(_dict(ev.get("exec")).get("program"))


def exec_argv(ev: dict[str, Any]) -> list[str]:
    argv = _dict(ev.get("exec")).get("argv")
    return [_str(a) for a in argv] if isinstance(argv, list) else []


def connect_target(ev: dict[str, Any]) -> str:
    """`host:port` (the resolved address beside a host name when they differ)."""
    target = _dict(ev.get("target"))
    host, port = _str(target.get("host")), target.get("port")
    address = _str(_dict(ev.get("connect")).get("address"))
    where = f"{host}:{port}" if port is not None else host
    if address and address != host:
        where = f"{where} ({address})" if where else address
    return where


def host(ev: dict[str, Any]) -> str:
    """What a host column shows for a runtime event: a connect's target host, else nothing."""
    return _str(_dict(ev.get("target")).get("host")) if ev.get("kind") == "connect" else ""


def describe(ev: dict[str, Any], limit: int = ARGS_LIMIT) -> str:
    """One line: `[tool] name(args) effects: fs 1`, `[fs] write /path`, `[exec] prog [argv]`,
    `[connect] host:port`."""
    kind = ev.get("kind")
    if kind == "tool":  # one pass over the tool block: the viewer's index labels every row with this
        tool = _dict(ev.get("tool"))
        text = f"[tool] {_str(tool.get('name') or ev.get('action'))}({args_summary(tool.get('args'), limit)})"
        if counts := _effects_of(tool):
            text += f" effects: {counts}"
        if drift := _drift_of(tool):
            text += f" contract drift: {drift}"
        return text
    if kind == "fs":
        target = _str(_dict(ev.get("fs")).get("target"))
        return clip(f"[fs] {fs_op(ev)} {fs_path(ev)}" + (f" → {target}" if target else ""), 8 * limit)
    if kind == "exec":
        argv = exec_argv(ev)
        shell = " (shell)" if _dict(ev.get("exec")).get("shell") is True else ""
        return clip(f"[exec] {exec_program(ev)} {compact_json(argv)}{shell}", 2 * limit)
    if kind == "connect":
        return clip(f"[connect] {connect_target(ev)}", 8 * limit)
    return f"[{_str(kind)}]"


def detail_pairs(ev: dict[str, Any]) -> list[tuple[str, str]]:
    """Every field a person reads in the full view of one runtime event, as (name, value) pairs."""
    kind = ev.get("kind")
    pairs: list[tuple[str, str]] = [("action", _str(ev.get("action")))]
    if kind == "tool":
        tool = _dict(ev.get("tool"))
        result = _dict(tool.get("result"))
        origin = _dict(tool.get("origin"))
        pairs += [
            ("tool", tool_name(ev)),
            ("args", compact_json(tool.get("args"))),
            ("args hash", args_hash(tool.get("args"))),
            ("result", result_summary(ev)),
            ("result sha256", _str(result.get("sha256"))),
            ("result bytes", _str(result.get("bytes"))),
            ("effects", effects_text(ev) or "none"),
        ]
        if drift := contract_drift(ev):
            pairs.append(("contract drift", drift))
        if origin:
            pairs.append(
                (
                    "origin",
                    f"pid {_str(origin.get('pid'))} thread {_str(origin.get('thread'))}"
                    + (f" task {_str(origin.get('task'))}" if origin.get("task") else ""),
                )
            )
    elif kind == "fs":
        fs = _dict(ev.get("fs"))
        pairs += [("path", fs_path(ev)), ("op", fs_op(ev)), ("audit event", _str(fs.get("event")))]
        if fs.get("target"):
            pairs.append(("target", _str(fs.get("target"))))
    elif kind == "exec":
        ex = _dict(ev.get("exec"))
        pairs += [
            ("program", exec_program(ev)),
            ("argv", compact_json(exec_argv(ev))),
            ("shell", _str(ex.get("shell"))),
            ("audit event", _str(ex.get("event"))),
        ]
    elif kind == "connect":
        conn = _dict(ev.get("connect"))
        pairs += [
            ("target", connect_target(ev)),
            ("family", _str(conn.get("family"))),
            ("audit event", _str(conn.get("event"))),
        ]
    pairs += [("call", _str(ev.get("call"))), ("parent call", _str(ev.get("parent_call")))]
    return [(k, v) for k, v in pairs if v]


# --- run totals (runs.RunSummary.to_dict()) -----------------------------------------------------


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def tool_calls_line(s: dict[str, Any]) -> str:
    """`3 (1 blocked, 1 failed, 1 contract drift; blocked by fs.deny_glob 1; search ×1, write_file ×2)`."""
    notes = [
        f"{s[name]} {label}"
        for name, label in (
            ("tool_blocked", "blocked"),
            ("tool_warned", "warned"),
            ("tool_failed", "failed"),
            ("contract_drifts", "contract drift"),
        )
        if s.get(name)
    ]
    rules = _counts(s.get("runtime_block_rules") or {})
    tools = ", ".join(f"{name} ×{n}" for name, n in sorted((s.get("tools") or {}).items()))
    parts = [p for p in (", ".join(notes), f"blocked by {rules}" if rules else "", tools) if p]
    return f"{s.get('tool_calls', 0)}" + (f" ({'; '.join(parts)})" if parts else "")


def effects_line(s: dict[str, Any]) -> str:
    """`fs 3, exec 1, connect 0 (1 blocked)`: what guarded calls did, seen by the audit hook."""
    fs, ex, conn = (s.get(f"effects_{k}", 0) for k in ("fs", "exec", "connect"))
    line = f"fs {fs}, exec {ex}, connect {conn}"
    return line + (f" ({s['effects_blocked']} blocked)" if s.get("effects_blocked") else "")
