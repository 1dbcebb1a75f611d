"""What the runtime tests share: the runtime events of a tape, schema-checked."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from failcore.demo.server import StandIn
from tests.helpers import read_tape

RUNTIME_KINDS = ("tool", "fs", "exec", "connect")


def planted_script(directory: Path, marker: Path, name: str = "planted.sh", then: str = "") -> Path:
    """A program of the agent's (written before the run: not the write under test) that writes
    "planted" into `marker`, then runs the shell line `then`."""
    if not directory.is_dir():  # (a mkdir of an existing directory is a write the runtime hook judges)
        directory.mkdir(parents=True)
    script = directory / name
    script.write_text(f"#!/bin/sh\necho planted > {marker}\n" + (f"{then}\n" if then else ""))
    script.chmod(0o755)
    return script


def assert_exec_refused(
    policy_text: str, tmp_path: Path, attack: Callable[[Path, Path], None], marker: Path, rule: str
) -> dict[str, Any]:
    """`attack(tmp_path, marker)` run under `policy_text` (strict): refused by `rule` (Blocked), the
    agent's program never ran (`marker` absent), the tape's exec BLOCKed by it and its tool call
    BLOCKED. The exec event, for the caller's own checks."""
    from failcore import Blocked, guard, run

    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(policy_text)
    with run(policy=policy, tape=tape, strict=True), pytest.raises(Blocked) as refused:
        guard(attack)(tmp_path, marker)
    assert refused.value.rule == rule
    assert not marker.exists()
    events = runtime_events(tape)
    exec_event = next(e for e in events if e["kind"] == "exec" and e["decision"] == "BLOCK")
    assert exec_event["rule"] == rule
    assert (events[-1]["kind"], events[-1]["outcome"]) == ("tool", "BLOCKED")
    return exec_event


def runtime_events(tape: Path) -> list[dict[str, Any]]:
    return [e for e in read_tape(tape) if e["kind"] in RUNTIME_KINDS]


def tools(tape: Path) -> list[dict[str, Any]]:
    return [e for e in read_tape(tape) if e["kind"] == "tool"]


def tape_bytes(tape: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(tape.glob("seg-*.jsonl")))


def enter_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path/work as the current directory (the tests' fs root), tmp_path/outside next to it, and
    no enclosing `failcore run` in the environment."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "outside").mkdir()
    for name in (
        "FAILCORE_EVENTS",
        "FAILCORE_EVENTS_TOKEN",
        "FAILCORE_RUN_ID",
        "FAILCORE_POLICY",
        "FAILCORE_TAPE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(work)
    return work


AGENT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import httpx

    from failcore import guard, run

    url = sys.argv[1]
    with run(strict=True) as ctx:

        @guard
        def fetch(url: str) -> str:
            with httpx.Client(timeout=30) as client:  # HTTPS_PROXY and SSL_CERT_FILE from failcore run
                return client.get(url + "/json").json()["service"]

        @guard
        def save(text: str) -> int:
            return Path("answer.txt").write_text(text)

        save(fetch(url))
        print(ctx.run_id, ctx.joined, ctx.tape)
    """
)


def failcore_run(tape: Path, upstream: StandIn, *command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    args = ["run", "--tape", str(tape), "--set", f"ssl_verify_upstream_trusted_ca={upstream.ca_path}", "--"]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith("FAILCORE_E")
    }
    return subprocess.run(
        [sys.executable, "-m", "failcore.cli", *args, *command],
        capture_output=True, text=True, timeout=120, env=env, cwd=cwd,
    )  # fmt: skip
