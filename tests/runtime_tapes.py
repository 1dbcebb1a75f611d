"""Tapes holding the runtime's events (kinds tool, fs, exec, connect; schema v2 as RUNTIME_SPEC fixes
them) beside network ones, written through the real TapeWriter as failcore.run() writes them, so the
views' tests do not depend on the runtime's own code. Hostile values sit in a tool argument, a path and
an argv: ANSI colour, an OSC window title and hyperlink, a bidi override, Rich markup and <script>."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from failcore.tape.keys import load_or_create_signing_key
from failcore.tape.writer import TapeWriter

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
HOSTILE_ARG = (
    "\x1b[31mred\x1b[0m \x1b]8;;https://evil.test\x07link\x1b]8;;\x07 <script>alert(1)</script> [bold]b[/]"
)
HOSTILE_PATH = "/tmp/sandbox/\x1b]0;pwned\x07<script>alert(2)</script>\u202etxt.exe"
HOSTILE_ARGV = ["sh", "-c", "echo \x1b[2J<script>alert(3)</script>"]


def _common(kind: str, run: str, ts: float, call: str, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": kind, "v": 2, "run": run, "ts_start": ts, "ts_end": ts + 0.004,
        "egress": {"tool": "TOOL", "fs": "FS", "exec": "EXEC", "connect": "NETWORK"}[kind],
        "action": None, "decision": "ALLOW", "rule": None, "reason": None, "would_block": False,
        "outcome": "ok", "fail_reason": None, "error": None, "latency_ms": 4.0, "summary": None,
        "dlp": None, "warnings": [], "call": call, "parent_call": None,
    }  # fmt: skip
    event.update(changes)
    return event


def tool(
    run: str,
    ts: float,
    name: str,
    args: dict[str, Any],
    *,
    call: str = "c0ffee0000000001",
    effects: dict[str, int] | None = None,
    result: dict[str, Any] | None = None,
    contract: dict[str, Any] | None = None,
    **changes: Any,
) -> dict[str, Any]:
    body = {
        "name": name,
        "args": args,
        "result": result or {"type": "text", "summary": "done", "sha256": "ab" * 32, "bytes": 4},
        "effects": {"fs": 0, "exec": 0, "connect": 0, "blocked": 0, **(effects or {})},
        "contract": contract,
        "origin": {"pid": 4242, "thread": "MainThread", "task": None},
    }
    return _common("tool", run, ts, call, action=name, tool=body, latency_ms=12.5, **changes)


def fs(
    run: str, ts: float, op: str, path: str, *, call: str = "c0ffee0000000001", **changes: Any
) -> dict[str, Any]:
    body = {"path": path, "op": op, "event": "open", "target": None}
    return _common("fs", run, ts, call, action=f"fs.{op}", fs=body, **changes)


def exec_(
    run: str, ts: float, argv: list[str], *, call: str = "c0ffee0000000001", **changes: Any
) -> dict[str, Any]:
    body = {"program": argv[0], "argv": argv, "shell": False, "event": "subprocess.Popen"}
    return _common("exec", run, ts, call, action="exec.spawn", exec=body, **changes)


def connect(
    run: str, ts: float, host: str, port: int, address: str, *, call: str = "c0ffee0000000001", **changes: Any
) -> dict[str, Any]:
    return _common(
        "connect",
        run,
        ts,
        call,
        action="net.connect",
        target={"host": host, "port": port, "scheme": "tcp"},
        connect={"address": address, "family": "ipv4", "event": "socket.connect"},
        **changes,
    )


def network(run: str, ts: float, seq_path: str = "/v1/chat/completions", **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": "network", "v": 1, "run": run, "ts_start": ts, "ts_end": ts + 0.25, "flow": f"flow-{ts}",
        "egress": "NETWORK", "action": "http.request",
        "target": {"host": "api.openai.com", "port": 443, "scheme": "https"},
        "method": "POST", "path": seq_path, "summary": f"POST {seq_path}",
        "decision": "ALLOW", "rule": None, "reason": None, "would_block": False, "outcome": "ok",
        "fail_reason": None, "error": None, "status": 200, "latency_ms": 250.0, "ttfb_ms": 20.0,
        "bytes_out": 10, "bytes_in": 20, "request": None, "response": None, "stream": None,
        "llm": None, "dlp": None, "warnings": [], "cut": None,
    }  # fmt: skip
    event.update(changes)
    return event


def lifecycle(kind: str, run: str, ts: float, **detail: Any) -> dict[str, Any]:
    return {"kind": kind, "v": 2, "run": run, "ts_start": ts, "ts_end": ts, "detail": detail}


def mixed_run(run: str, t0: float = T0, *, write_path: str = "/tmp/sandbox/out.txt") -> list[dict[str, Any]]:
    """An agent run: an LLM call, a tool writing a file (ok), a tool blocked writing outside the
    sandbox, a tool spawning a process and one connecting to the metadata address (blocked), a tool
    whose output drifted from its JSON contract, and a hostile tool argument and path."""
    return [
        lifecycle("run_start", run, t0, policy="fs_safe", mode="enforce"),
        network(run, t0 + 1),
        fs(run, t0 + 2, "write", write_path, call="a000000000000001"),
        tool(run, t0 + 2.1, "write_file", {"path": write_path, "content": "hello"}, call="a000000000000001",
             effects={"fs": 1}),
        fs(run, t0 + 3, "write", "/etc/passwd", call="a000000000000002", decision="BLOCK", outcome="BLOCKED",
           rule="fs.write_outside_roots", reason="/etc/passwd is outside the write roots"),
        tool(run, t0 + 3.1, "write_file", {"path": "../../etc/passwd", "content": "hack"},
             call="a000000000000002", effects={"fs": 1, "blocked": 1}, decision="BLOCK", outcome="BLOCKED",
             rule="fs.write_outside_roots", reason="/etc/passwd is outside the write roots"),
        exec_(run, t0 + 4, ["git", "status", "--short"], call="a000000000000003"),
        tool(run, t0 + 4.1, "git_status", {}, call="a000000000000003", effects={"exec": 1}),
        connect(run, t0 + 5, "169.254.169.254", 80, "169.254.169.254", call="a000000000000004",
                decision="BLOCK", outcome="BLOCKED", rule="net.metadata", reason="metadata address"),
        tool(run, t0 + 5.1, "fetch_url", {"url": "http://169.254.169.254/latest/meta-data/"},
             call="a000000000000004", effects={"connect": 1, "blocked": 1}, outcome="FAIL",
             fail_reason="tool_error", error="PermissionError: blocked by failcore"),
        tool(run, t0 + 6, "summarize", {"text": "quarterly numbers"}, call="a000000000000005",
             result={"type": "text", "summary": "Sure! Here is", "sha256": "cd" * 32, "bytes": 13},
             contract={"expected": "json", "got": "text", "drift": True},
             warnings=[{"code": "contract_drift", "message": "summarize: expected json, got text"}]),
        fs(run, t0 + 7, "write", HOSTILE_PATH, call="a000000000000006"),
        exec_(run, t0 + 7.05, HOSTILE_ARGV, call="a000000000000006"),
        tool(run, t0 + 7.1, "note", {"title": HOSTILE_ARG}, call="a000000000000006",
             effects={"fs": 1, "exec": 1}),
        lifecycle("run_end", run, t0 + 8),
    ]  # fmt: skip


def write_events(tape: Path, keys: Path, events: list[dict[str, Any]], **writer: Any) -> None:
    """Through the real TapeWriter (hash chain, checkpoints, signatures), as the runtime writes."""
    key = load_or_create_signing_key(keys)
    with TapeWriter(tape, signing_key=key, run_id="writer", checkpoint_every=4, **writer) as w:
        for ev in events:
            assert w.submit(ev)
