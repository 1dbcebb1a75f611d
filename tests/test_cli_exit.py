"""How the `failcore` console script ends its process.

A command that ran mitmproxy ends without finalising the interpreter: mitmproxy_rs's tokio threads
outlive the proxy, and one touching a Python object during finalisation segfaults the process
(mitmproxy/mitmproxy#7409; seen as `failcore run --contain` exiting -11 after its summary). The run's
output and tape must be complete all the same; other commands end as usual.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from tests.helpers import read_tape

REPO = Path(__file__).resolve().parent.parent

# Through `entry`, as the console script and `python -m failcore.cli` run it, with an exit handler that
# says whether the interpreter was finalised.
LAUNCHER = (
    "import atexit, sys; atexit.register(lambda: print('interpreter finalised', file=sys.stderr)); "
    "sys.argv = ['failcore', *sys.argv[1:]]; from failcore.cli.main import entry; entry()"
)


def launch(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(FAILCORE_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO))
    env.pop("COLUMNS", None)
    return subprocess.run(
        [sys.executable, "-c", LAUNCHER, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
        check=False,
    )


def test_run_ends_without_finalising_and_loses_nothing(tmp_path: Path) -> None:
    tape = tmp_path / "tape"
    result = launch(
        tmp_path, "run", "--json", "--tape", str(tape), "--", sys.executable, "-c", "raise SystemExit(7)"
    )
    assert result.returncode == 7, result.stderr
    assert "interpreter finalised" not in result.stderr
    summary = orjson.loads(result.stdout)  # the whole summary reached the pipe
    assert summary["exit_code"] == 7 and summary["requests"] == 0
    kinds = [e["kind"] for e in read_tape(tape)]
    assert kinds == ["run_start", "policy", "run_end", "checkpoint"], kinds
    verified = launch(tmp_path, "verify", str(tape))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_other_commands_end_as_usual(tmp_path: Path) -> None:
    result = launch(tmp_path, "list", "--json", "--tape", str(tmp_path / "empty"))
    assert "interpreter finalised" in result.stderr, result.stderr
