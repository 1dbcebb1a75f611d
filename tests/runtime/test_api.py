"""The public API's shape: `from failcore import run, guard` is lazy and light, guard keeps the
function's identity, Blocked is a PermissionError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import failcore
from failcore import Blocked, guard, run
from failcore.event import FAIL_REASONS, SCHEMA_VERSION
from tests.runtime.helpers import runtime_events


def test_import_failcore_and_the_runtime_api_load_no_proxy() -> None:
    code = (
        "import sys, failcore; before = 'failcore.runtime' in sys.modules; "
        "from failcore import run, guard; "
        "print(before, sorted(m for m in ('mitmproxy', 'hyperscan', 'textual') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False []"


def test_unknown_attributes_still_raise() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = failcore.nope  # type: ignore[attr-defined]


def test_guard_keeps_the_function_identity_and_blocked_is_a_permission_error() -> None:
    def tool(x: int) -> int:
        """Doc."""
        return x

    wrapped = guard(tool)
    assert wrapped.__name__ == "tool" and wrapped.__doc__ == "Doc." and wrapped.__wrapped__ is tool
    assert guard()(tool)(3) == 3 and guard(name="t")(tool)(4) == 4
    assert issubclass(Blocked, PermissionError)
    assert SCHEMA_VERSION == 2 and "tool_error" in FAIL_REASONS


def test_the_issue_example_with_the_shipped_fs_safe_preset(workdir: Path, tmp_path: Path) -> None:
    tape = tmp_path / "tape"
    with run(policy="fs_safe", strict=True, tape=tape) as ctx:

        @guard()
        def write_file(path: str, content: str) -> None:
            with open(path, "w") as f:
                f.write(content)

        with pytest.raises(Blocked) as refused:
            write_file("../etc/passwd", "hack")  # blocked before it runs; evidence recorded
        write_file("notes.txt", "fine")
    assert not (tmp_path / "etc").exists() and (workdir / "notes.txt").read_text() == "fine"
    assert refused.value.rule == "fs.write_outside_roots" and ctx.blocked == 1
    assert ctx.policy.name == "fs_safe.yaml"
    outcomes = [(e["kind"], e["outcome"]) for e in runtime_events(tape)]
    assert outcomes == [("fs", "BLOCKED"), ("tool", "BLOCKED"), ("fs", "ok"), ("tool", "ok")]
