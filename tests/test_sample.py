"""Quick-start command 1: the offline sample runs end to end and says what happened."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from tests.helpers import REPO, network_events, read_tape


def test_sample_runs_offline_and_records_the_three_outcomes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(FAILCORE_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO), COLUMNS="120")
    tape = tmp_path / "tape"
    done = subprocess.run(
        [sys.executable, "-m", "failcore.cli", "sample", "--json", "--tape", str(tape)],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    out = orjson.loads(done.stdout)
    log = out["agent"]
    assert log[0].startswith("1. LLM answered over SSE: 'Echo: Summarise the quarterly report'")
    assert log[1].startswith("2. exfiltration attempt refused by failcore")
    assert log[2] == "3. flaky upstream answered 503"
    summary = out["summary"]
    assert (summary["requests"], summary["blocked"], summary["failed"]) == (3, 1, 1)
    assert summary["fail_reasons"] == {"upstream_status": 1}
    assert summary["llm_calls"] == 1 and summary["input_tokens"] > 0
    events = network_events(read_tape(tape))
    assert [e["outcome"] for e in events] == ["ok", "BLOCKED", "FAIL"]
    assert events[0]["stream"]["chunk_count"] > 1 and events[0]["llm"]["stream"] is True
    assert events[1]["action"] == "http.connect"
    verify = subprocess.run(
        [sys.executable, "-m", "failcore.cli", "verify", str(tape)], env=env, capture_output=True, timeout=60
    )
    assert verify.returncode == 0, verify.stdout.decode()
