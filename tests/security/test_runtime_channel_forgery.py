"""Runtime attack: a child of `failcore run` abuses the events socket — without the token, with kinds
only failcore may write (a forged network exchange, a run_start), with another run's id and a false
pid. Nothing is written as given: refusals are internal_error events naming the sender's real pid."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import read_tape

FORGER = textwrap.dedent(
    """
    import os, socket, time

    import orjson

    def send(first, *events):
        s = socket.socket(socket.AF_UNIX)
        s.connect(os.environ["FAILCORE_EVENTS"])
        s.sendall(first + b"\\n" + b"".join(orjson.dumps(e) + b"\\n" for e in events))
        time.sleep(0.2)
        s.close()

    token = os.environ["FAILCORE_EVENTS_TOKEN"].encode()
    tool = {"kind": "tool", "v": 2, "run": "someone-else", "ts_start": 1.0, "ts_end": 1.0, "egress": "TOOL",
            "action": "planted", "call": "c0ffee", "parent_call": None, "summary": None, "decision": "ALLOW",
            "rule": None, "reason": None, "would_block": False, "outcome": "ok", "fail_reason": None,
            "error": None, "latency_ms": 0.0, "dlp": None, "warnings": [],
            "tool": {"name": "planted", "args": {},
                     "result": {"type": "none", "summary": "", "sha256": "0" * 64, "bytes": 0},
                     "effects": {"fs": 0, "exec": 0, "connect": 0, "blocked": 0}, "contract": None,
                     "origin": {"pid": 1, "thread": "MainThread", "task": None}}}
    send(b"not-the-token", dict(tool, action="without-token"))
    send(token,
         {"kind": "tool", "call": "c1", "tool": {}},
         {"kind": "network", "run": "x", "flow": "f", "action": "http.request", "path": "/forged"},
         {"kind": "run_start", "run": "x", "ts_start": 1.0, "detail": {}},
         {"kind": "checkpoint", "sig": "forged"},
         tool)
    print(os.getpid())
    """
)


def test_the_events_socket_writes_nothing_as_given(workdir: Path, tmp_path: Path) -> None:
    script, tape = tmp_path / "forger.py", tmp_path / "tape"
    script.write_text(FORGER)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    result = subprocess.run(
        [sys.executable, "-m", "failcore.cli", "run", "--tape", str(tape), "--", sys.executable, str(script)],
        capture_output=True, text=True, timeout=120, env=env, cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    pid = int(result.stdout.strip())
    events = read_tape(tape)
    run_id = events[0]["run"]
    assert [e["kind"] for e in events].count("run_start") == 1
    assert not [e for e in events if e["kind"] == "network" or e.get("path") == "/forged"]
    errors = [e["error"] for e in events if e["kind"] == "internal_error"]
    assert errors == [
        f"runtime channel refused an event from pid {pid}: wrong or missing FAILCORE_EVENTS_TOKEN",
        f"runtime channel refused an event from pid {pid}: a tool event needs ts_start, egress, action, "
        "decision, rule, reason, would_block, outcome, fail_reason, error, latency_ms, warnings",
        f"runtime channel refused an event from pid {pid}: kind 'network' is not one a child may send "
        "(tool, fs, exec, connect)",
        f"runtime channel refused an event from pid {pid}: kind 'run_start' is not one a child may send "
        "(tool, fs, exec, connect)",
        f"runtime channel refused an event from pid {pid}: kind 'checkpoint' is not one a child may send "
        "(tool, fs, exec, connect)",
    ]
    (tool,) = [e for e in events if e["kind"] == "tool"]
    assert tool["action"] == "planted"  # the only event with the token: stamped with the truth
    assert tool["run"] == run_id and tool["tool"]["origin"]["pid"] == pid
