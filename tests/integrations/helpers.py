"""What the integration tests share: a strict policy with a write sandbox, and the tape's tool events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.helpers import read_tape


def sandbox_policy(tmp_path: Path) -> tuple[Path, Path]:
    """(policy file, sandbox): writes allowed only under the sandbox."""
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nfs:\n  write: [{json.dumps(str(sandbox))}]\n")
    return policy, sandbox


def events_of(tape: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in read_tape(tape) if e["kind"] == kind]
