"""Run `failcore run` with a gate in what failcore.quickstart loads in the background: "mitmproxy
loaded" waits until the child writes GATE_MARKER (or the gate raises, with fail=True)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Run failcore with one more module in failcore.quickstart.PRELOAD: the gate.
LAUNCHER = (
    "import sys, failcore.quickstart as q; q.PRELOAD = (*q.PRELOAD, 'failcore_test_gate'); "
    "from failcore.cli.main import main; sys.exit(main(sys.argv[1:]))"
)
GATE = textwrap.dedent(
    """
    import os, time
    from pathlib import Path
    marker = Path(os.environ["GATE_MARKER"])
    if os.environ.get("GATE_FAIL"):
        raise RuntimeError("gate says no")
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    """
)


def run_gated(
    tmp_path: Path, *command: str, fail: bool = False
) -> tuple[subprocess.CompletedProcess[str], Path]:
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir(exist_ok=True)
    (gate_dir / "failcore_test_gate.py").write_text(GATE)
    tape = tmp_path / "tape"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(
        FAILCORE_HOME=str(tmp_path / "home"),
        PYTHONPATH=os.pathsep.join([str(REPO), str(gate_dir)]),
        GATE_MARKER=str(tmp_path / "connected"),
    )
    if fail:
        env["GATE_FAIL"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", LAUNCHER, "run", "--json", "--tape", str(tape), "--", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    return result, tape


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
