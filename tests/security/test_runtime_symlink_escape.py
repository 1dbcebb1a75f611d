"""Runtime attack: a symlink inside the root that points outside it (a directory link and a file link):
writing through it is refused in strict mode and the file outside stays untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from failcore import Blocked, guard, run
from tests.runtime.helpers import runtime_events

POLICY = "version: 1\nfs:\n  read: .\n  write: .\n"


@guard
def write_file(path: str, content: str) -> None:
    with open(path, "w") as f:
        f.write(content)


def test_writing_through_a_symlink_that_leaves_the_root_is_refused(workdir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    target = outside / "target.txt"
    target.write_text("original")
    (workdir / "dir-link").symlink_to(outside, target_is_directory=True)
    (workdir / "file-link").symlink_to(target)
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY)
    with run(policy=policy, tape=tape, strict=True):
        for path in ("dir-link/new.txt", "file-link"):
            with pytest.raises(Blocked):
                write_file(path, "hack")
    assert target.read_text() == "original" and not (outside / "new.txt").exists()
    fs = [e for e in runtime_events(tape) if e["kind"] == "fs"]
    # Recorded as the resolved path, outside the root: what the write would really have touched.
    assert [e["fs"]["path"] for e in fs] == [str(outside / "new.txt"), str(target)]
    assert {e["rule"] for e in fs} == {"fs.write_outside_roots"}
