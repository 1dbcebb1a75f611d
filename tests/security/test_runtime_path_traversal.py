"""Runtime attack: a guarded tool writes outside its root with `..` (open() and os.open): refused in
strict mode before the file exists, and the tape names the rule."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from failcore import Blocked, guard, run
from tests.runtime.helpers import runtime_events

POLICY = "version: 1\nfs:\n  read: .\n  write: .\n"


def with_open(path: str) -> None:
    with open(path, "w") as f:
        f.write("hack")


def with_os_open(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)


@pytest.mark.parametrize("write", [with_open, with_os_open], ids=["open", "os.open"])
def test_dot_dot_write_is_refused_before_the_file_exists(
    workdir: Path, tmp_path: Path, write: Callable[[str], None]
) -> None:
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY)
    with run(policy=policy, tape=tape, strict=True) as ctx:
        tool = guard(name="write_file")(write)
        with pytest.raises(Blocked) as refused:
            tool("../outside/passwd")
        tool("inside.txt")  # the same tool inside its root is fine
    assert refused.value.rule == "fs.write_outside_roots"
    assert not (tmp_path / "outside" / "passwd").exists()
    assert (workdir / "inside.txt").exists()
    fs_blocked, tool_blocked, fs_ok, tool_ok = runtime_events(tape)
    assert fs_blocked["fs"]["path"] == str(tmp_path / "outside" / "passwd")
    assert (fs_blocked["decision"], fs_blocked["outcome"]) == ("BLOCK", "BLOCKED")
    assert (tool_blocked["outcome"], tool_blocked["rule"]) == ("BLOCKED", "fs.write_outside_roots")
    assert tool_blocked["tool"]["args"] == {"path": "../outside/passwd"}
    assert (fs_ok["decision"], tool_ok["outcome"]) == ("ALLOW", "ok")
    assert ctx.blocked == 1
