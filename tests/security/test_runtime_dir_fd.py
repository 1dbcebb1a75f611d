"""Runtime attack: a guarded tool changes files outside its write roots with a name relative to a
directory descriptor (`dir_fd=`, `src_dir_fd=`, `dst_dir_fd=`) opened outside (reading a directory is
allowed), or makes a FIFO or device node there (os.mkfifo and os.mknod raise no audit event). The path
is judged where the kernel resolves it: refused in strict mode before it happens, nothing is created,
removed or renamed outside, and the tape holds the fs event BLOCKED with the real path."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from failcore import Blocked, guard, run
from tests.runtime.helpers import runtime_events

POLICY = "version: 1\nfs:\n  write: ['.']\n"


@pytest.fixture
def outside(workdir: Path, tmp_path: Path) -> Iterator[int]:
    """A descriptor of tmp_path/outside (which holds a file `victim`), open before the run."""
    (tmp_path / "outside" / "victim").write_text("keep")
    fd = os.open(tmp_path / "outside", os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def create_at(fd: int) -> None:
    os.close(os.open("x", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))


def create_with_opener(fd: int) -> None:
    with open("x", "w", opener=lambda name, flags: os.open(name, flags, dir_fd=fd)) as f:
        f.write("planted")


def truncate_at(fd: int) -> None:
    os.close(os.open("victim", os.O_WRONLY | os.O_TRUNC, dir_fd=fd))


def unlink_at(fd: int) -> None:
    os.unlink("victim", dir_fd=fd)


def rename_in(fd: int) -> None:
    Path("x").write_text("planted")  # inside the roots: allowed
    os.rename("x", "x", dst_dir_fd=fd)


def rename_out(fd: int) -> None:
    os.rename("victim", "stolen", src_dir_fd=fd)


def mkdir_at(fd: int) -> None:
    os.mkdir("x", dir_fd=fd)


def symlink_at(fd: int) -> None:
    os.symlink("/etc/passwd", "x", dir_fd=fd)


def mkfifo_at(fd: int) -> None:
    os.mkfifo("x", dir_fd=fd)


def mkfifo_path(fd: int) -> None:
    os.mkfifo("../outside/x")


def mknod_path(fd: int) -> None:
    os.mknod("../outside/x", 0o600 | stat.S_IFREG)


def mknod_at(fd: int) -> None:
    os.mknod("x", 0o600 | stat.S_IFREG, dir_fd=fd)


ATTACKS: dict[Callable[[int], None], tuple[str, str]] = {
    create_at: ("x", "open"),
    create_with_opener: ("x", "open"),
    truncate_at: ("victim", "open"),
    unlink_at: ("victim", "os.remove"),
    rename_in: ("x", "os.rename"),
    rename_out: ("victim", "os.rename"),
    mkdir_at: ("x", "os.mkdir"),
    symlink_at: ("x", "os.symlink"),
    mkfifo_at: ("x", "os.mkfifo"),
    mkfifo_path: ("x", "os.mkfifo"),
    mknod_at: ("x", "os.mknod"),
    mknod_path: ("x", "os.mknod"),
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=[a.__name__ for a in ATTACKS])
def test_a_change_outside_the_roots_through_a_directory_descriptor_is_refused(
    workdir: Path, tmp_path: Path, outside: int, attack: Callable[[int], None]
) -> None:
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY)
    with run(policy=policy, tape=tape, strict=True), pytest.raises(Blocked) as refused:
        guard(attack)(outside)
    assert refused.value.rule == "fs.write_outside_roots"
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["victim"]
    assert (tmp_path / "outside" / "victim").read_text() == "keep"
    name, event = ATTACKS[attack]
    events = runtime_events(tape)
    blocked = [e for e in events if e["decision"] == "BLOCK"]
    fs, tool = blocked
    assert (fs["kind"], fs["rule"], fs["fs"]["event"]) == ("fs", "fs.write_outside_roots", event)
    real = str(tmp_path / "outside" / name)
    assert real in (fs["fs"]["path"], fs["fs"]["target"])
    assert (tool["kind"], tool["outcome"]) == ("tool", "BLOCKED")


def test_a_directory_descriptor_inside_the_roots_is_allowed(workdir: Path, tmp_path: Path) -> None:
    """The descriptor decides, not the working directory: a tool in a directory outside the roots that
    writes through a descriptor of one inside is let through."""
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(POLICY)
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)

    @guard
    def tool() -> None:
        os.chdir(tmp_path / "outside")
        try:
            create_at(fd)
            os.mkfifo("fifo", dir_fd=fd)
            os.rename("x", "y", src_dir_fd=fd, dst_dir_fd=fd)
        finally:
            os.chdir(workdir)

    try:
        with run(policy=policy, tape=tape, strict=True):
            tool()
    finally:
        os.close(fd)
    assert (workdir / "y").exists() and stat.S_ISFIFO((workdir / "fifo").lstat().st_mode)
    events = [e for e in runtime_events(tape) if e["kind"] == "fs" and e["fs"]["op"] != "read"]
    assert [(e["decision"], e["fs"]["event"], e["fs"]["path"]) for e in events] == [
        ("ALLOW", "open", str(workdir / "x")),
        ("ALLOW", "os.mkfifo", str(workdir / "fifo")),
        ("ALLOW", "os.rename", str(workdir / "x")),
    ]
    assert events[-1]["fs"]["target"] == str(workdir / "y")


def test_os_keeps_announcing_dir_fd_support(workdir: Path, tmp_path: Path) -> None:
    """shutil.rmtree's safe (descriptor-based) walk checks os.open is in os.supports_dir_fd."""
    with run(tape=tmp_path / "tape"):
        assert {os.open, os.mkfifo, os.mknod, os.unlink, os.stat} <= os.supports_dir_fd
