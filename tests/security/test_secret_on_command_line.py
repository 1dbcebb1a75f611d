"""Attack: a credential on the command line. `failcore run -- agent --token ghp_…` and a script that
opens its own `failcore.run()` record their command line in run_start; the run's DLP rules mask it
there like anywhere else, so the token never reaches the disk in clear."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import github_token, read_tape
from tests.security.helpers import tape_bytes


def _env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith(("FAILCORE_E", "FAILCORE_RUN", "FAILCORE_T"))
    }


def _argv_of_run_start(tape: Path) -> list[str]:
    (start,) = [e for e in read_tape(tape) if e["kind"] == "run_start"]
    return start["detail"]["argv"]


def test_a_token_on_failcore_runs_command_line_is_masked_in_run_start(tmp_path: Path) -> None:
    token, tape = github_token(), tmp_path / "tape"
    done = subprocess.run(
        [sys.executable, "-m", "failcore.cli", "run", "--tape", str(tape), "--",
         sys.executable, "-c", "pass", "--token", token],
        capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    argv = _argv_of_run_start(tape)
    assert argv[-2] == "--token" and argv[-1].startswith("ghp_") and argv[-1] != token
    assert token.encode() not in tape_bytes(tape)


def test_a_token_on_a_runtime_scripts_command_line_is_masked_in_run_start(tmp_path: Path) -> None:
    token, tape = github_token(), tmp_path / "tape"
    script = tmp_path / "agent.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from failcore import run

            with run(tape=sys.argv[1]):
                pass
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script), str(tape), token],
        capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    argv = _argv_of_run_start(tape)
    assert argv[-1].startswith("ghp_") and argv[-1] != token
    assert token.encode() not in tape_bytes(tape)


def test_a_token_is_masked_on_a_command_line_otherwise_known_clean(tmp_path: Path) -> None:
    """`failcore run` remembers the strings of a command line its DLP rules found nothing in
    (failcore.dlp.knownclean) and skips scanning them next time: the same command line with a token
    added, in the place of a remembered string or next to them, is still masked."""
    token, tape = github_token(), tmp_path / "tape"
    env = {**_env(), "FAILCORE_HOME": str(tmp_path / "home")}
    for last in ("plain-value", token, "plain-value", token):
        done = subprocess.run(
            [sys.executable, "-m", "failcore.cli", "run", "--tape", str(tape), "--",
             sys.executable, "-c", "pass", "--token", last],
            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    starts = [e["detail"]["argv"] for e in read_tape(tape) if e["kind"] == "run_start"]
    assert [argv[-1] for argv in starts[::2]] == ["plain-value", "plain-value"]
    for argv in starts[1::2]:
        assert argv[-1].startswith("ghp_") and argv[-1] != token
    assert token.encode() not in tape_bytes(tape)
    for path in (tmp_path / "home").rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes() and b"plain-value" not in path.read_bytes()
