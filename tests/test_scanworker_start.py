"""How the DLP evidence worker's child is started (failcore.evidence.scanworker.ScanWorker)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from failcore.dlp.rules import policy_rules
from failcore.evidence import scanworker, workerpipe
from failcore.evidence.scanworker import ScanOrigin, ScanWorker, rules_sha256
from failcore.policy.load import load_policy
from failcore.shipped import default_policy_path


def started_environment(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment a real ScanWorker starts its child with."""
    path = default_policy_path()
    policy = load_policy(path)
    origin = ScanOrigin(
        str(path), policy.sha256, policy.mode, b"0123456789abcdef", rules_sha256(policy_rules(policy))
    )
    seen: list[dict[str, str]] = []
    real = subprocess.Popen

    def spy(*args: Any, **kw: Any) -> Any:
        seen.append(dict(kw["env"]))
        return real(*args, **kw)

    monkeypatch.setattr(scanworker.subprocess, "Popen", spy)
    worker = ScanWorker(origin)
    worker.close()
    monkeypatch.setattr(scanworker.subprocess, "Popen", real)
    assert len(seen) == 1
    return seen[0]


def test_the_child_may_write_bytecode_caches_unless_the_user_said_not_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    env = started_environment(monkeypatch)
    # Forced to 1, the child compiled failcore from source at every start where no cache existed.
    assert "PYTHONDONTWRITEBYTECODE" not in env
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(Path(scanworker.__file__).resolve().parents[2])
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    assert started_environment(monkeypatch).get("PYTHONDONTWRITEBYTECODE") == "1"  # the user's choice


def test_frames_go_through_pipes_numbered_above_select_s_limit() -> None:
    """A proxy holding over a thousand connections restarts its worker on descriptors above 1024,
    which select() refuses (ValueError: the worker counted as lost at every batch)."""
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 2100:
        pytest.skip("the descriptor limit is below 2100")
    read_end, write_end = os.pipe()
    high_read, high_write = os.dup2(read_end, 2000), os.dup2(write_end, 2001)
    os.close(read_end)
    os.close(write_end)
    try:
        data = b'{"ok":true}'
        os.write(high_write, workerpipe.LENGTH.pack(len(data)) + data)
        assert workerpipe.read_frame(high_read, time.monotonic() + 30) == {"ok": True}
        os.set_blocking(high_write, False)  # as a batch is written
        workerpipe.write_all(high_write, workerpipe.LENGTH.pack(len(data)) + data, time.monotonic() + 30)
        assert workerpipe.read_frame(high_read, time.monotonic() + 30) == {"ok": True}
    finally:
        os.close(high_read)
        os.close(high_write)
