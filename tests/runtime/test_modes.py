"""strict blocks, observe warns and lets the operation happen; a failure inside failcore is recorded
and fails open unless the policy says `fail_open: false`; policy edits apply within half a second."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import failcore.runtime.rules as policy_runtime
from failcore import Blocked, guard, run
from tests.helpers import read_tape
from tests.runtime.helpers import runtime_events, tools

POLICY = """\
version: 1
mode: observe
default: ALLOW
fail_open: {fail_open}
"""


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def connect_to(address: tuple[str, int]) -> str:
    with socket.create_connection(address, timeout=5):
        return "connected"


def test_observe_warns_and_lets_the_connection_happen(
    workdir: Path, tmp_path: Path, listener: socket.socket
) -> None:
    tape = tmp_path / "tape"
    with run(tape=tape, strict=False) as ctx:
        assert guard(connect_to)(listener.getsockname()) == "connected"
    conn, _ = listener.accept()  # it really reached the listener
    conn.close()
    connect, tool = runtime_events(tape)
    assert (connect["decision"], connect["would_block"], connect["rule"]) == ("WARN", True, "net.loopback")
    assert connect["target"] == {"host": "127.0.0.1", "port": listener.getsockname()[1], "scheme": "tcp"}
    assert (tool["decision"], tool["outcome"], tool["would_block"]) == ("WARN", "ok", True)
    assert ctx.warned == 1 and ctx.blocked == 0


def test_a_tool_that_catches_the_refusal_still_ends_blocked(
    workdir: Path, tmp_path: Path, listener: socket.socket
) -> None:
    tape = tmp_path / "tape"

    @guard
    def careful() -> str:
        try:
            return connect_to(listener.getsockname())
        except PermissionError as exc:
            assert isinstance(exc, Blocked) and exc.rule == "net.loopback"
            return "fell back"

    with run(tape=tape, strict=True):
        assert careful() == "fell back"
    (tool,) = tools(tape)
    assert (tool["outcome"], tool["rule"], tool["tool"]["effects"]["blocked"]) == (
        "BLOCKED",
        "net.loopback",
        1,
    )
    with pytest.raises(BlockingIOError):
        listener.accept()


def _write_policy(path: Path, fail_open: bool) -> None:
    path.write_text(POLICY.format(fail_open=str(fail_open).lower()))


def _break_fs_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("injected failure in the fs check")

    monkeypatch.setattr(policy_runtime, "check_fs", broken)


def test_a_failure_inside_failcore_is_recorded_and_the_tool_still_runs(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    _write_policy(policy, fail_open=True)
    _break_fs_checks(monkeypatch)
    with run(policy=policy, tape=tape, strict=True) as ctx:
        guard(Path.write_text)(Path("kept.txt"), "data")
    assert (workdir / "kept.txt").read_text() == "data"
    errors = [e for e in read_tape(tape) if e["kind"] == "internal_error"]
    assert [e["error"] for e in errors] == ["RuntimeError: injected failure in the fs check"]
    assert errors[0]["detail"] == {"where": "runtime.policy", "fail_open": True}
    fs, tool = runtime_events(tape)
    assert (fs["decision"], tool["outcome"]) == ("ALLOW", "ok")
    assert ctx.internal_errors == 1


def test_fail_open_false_refuses_what_failcore_could_not_check(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    _write_policy(policy, fail_open=False)
    _break_fs_checks(monkeypatch)
    with run(policy=policy, tape=tape, strict=False), pytest.raises(Blocked):
        guard(Path.write_text)(Path("refused.txt"), "data")
    assert not (workdir / "refused.txt").exists()
    (tool,) = tools(tape)
    assert (tool["outcome"], tool["rule"]) == ("BLOCKED", "internal_error")


def test_a_policy_edit_applies_within_half_a_second_and_its_reading_is_not_recorded(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    _write_policy(policy, fail_open=True)
    _break_fs_checks(monkeypatch)
    write = guard(Path.write_text)
    with run(policy=policy, tape=tape):
        write(Path("before.txt"), "x")
        _write_policy(policy, fail_open=False)
        later = time.time() + 5
        os.utime(policy, (later, later))  # a different mtime even on coarse file systems
        time.sleep(0.6)
        with pytest.raises(Blocked):
            write(Path("after.txt"), "x")
    assert (workdir / "before.txt").exists() and not (workdir / "after.txt").exists()
    paths = [e["fs"]["path"] for e in runtime_events(tape) if e["kind"] == "fs"]
    assert str(policy) not in paths and len(paths) == 2
