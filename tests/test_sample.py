"""Quick-start command 1: the offline sample runs end to end and says what happened."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import REPO, network_events, read_tape


@dataclass
class Sample:
    out: dict[str, Any]
    tape: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    """One `failcore sample --json` run (a real subprocess) that the tests below inspect."""
    tmp_path = tmp_path_factory.mktemp("sample")
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
    return Sample(orjson.loads(done.stdout), tape, env)


def test_sample_runs_offline_and_records_the_three_outcomes(sample: Sample) -> None:
    out, tape, env = sample.out, sample.tape, sample.env
    log = out["agent"]
    assert log[0].startswith("1. LLM answered over SSE: 'Echo: Summarise the quarterly report'")
    assert log[1].startswith("2. exfiltration attempt refused by failcore")
    assert log[2] == "3. flaky upstream answered 503"
    summary = out["summary"]
    assert (summary["requests"], summary["blocked"], summary["failed"]) == (3, 1, 1)
    assert summary["fail_reasons"] == {"upstream_status": 1}
    assert summary["llm_calls"] == 1 and summary["input_tokens"] > 0
    events = network_events([e for e in read_tape(tape) if e.get("run") == summary["run"]])
    assert [e["outcome"] for e in events] == ["ok", "BLOCKED", "FAIL"]
    assert events[0]["stream"]["chunk_count"] > 1 and events[0]["llm"]["stream"] is True
    assert events[1]["action"] == "http.connect"
    verify = subprocess.run(
        [sys.executable, "-m", "failcore.cli", "verify", str(tape)], env=env, capture_output=True, timeout=60
    )
    assert verify.returncode == 0, verify.stdout.decode()


def test_sample_guarded_tools_block_a_write_outside_the_sandbox_and_record_a_contract_drift(
    sample: Sample,
) -> None:
    tools = sample.out["tools"]
    log = tools["log"]
    assert log[0] == "4. guarded write_file inside the sandbox: wrote 17 bytes"
    assert log[1] == (
        "5. guarded write_file('sandbox/../outside.txt') blocked before the file was opened"
        " (fs.write_outside_roots)"
    )
    assert log[2].startswith("6. lookup_order declared json output, returned text")
    events = [e for e in read_tape(sample.tape) if e.get("run") == tools["run"]]
    calls = [(e["action"], e["outcome"]) for e in events if e["kind"] == "tool"]
    assert calls == [("write_file", "ok"), ("write_file", "BLOCKED"), ("lookup_order", "ok")]
    inside, outside, lookup = (e for e in events if e["kind"] == "tool")
    writes = [e for e in events if e["kind"] == "fs"]
    # Each write seen where it happened (the audit hook), under the call that made it.
    assert [(e["call"], e["outcome"], Path(e["fs"]["path"]).name) for e in writes] == [
        (inside["call"], "ok", "notes.txt"),
        (outside["call"], "BLOCKED", "outside.txt"),
    ]
    blocked = writes[1]
    assert blocked["rule"] == outside["rule"] == "fs.write_outside_roots"
    # `sandbox/../outside.txt` is recorded resolved: the `..` does not hide where it pointed.
    assert ".." not in blocked["fs"]["path"] and Path(blocked["fs"]["path"]).parent.name != "sandbox"
    assert lookup["tool"]["contract"] == {"expected": "json", "got": "text", "drift": True}
    assert [w["code"] for w in lookup["warnings"]] == ["contract_drift"]


def test_sample_replays_the_recorded_run_offline(sample: Sample) -> None:
    replay, recorded = sample.out["replay"], sample.out["summary"]["run"]
    assert replay["replay_of"] == recorded
    # The stand-in had stopped: the same answers came from the tape.
    assert [line.split(" replayed offline: ")[1] for line in replay["log"]] == [
        line[3:] for line in sample.out["agent"]
    ]
    events = [e for e in read_tape(sample.tape) if e.get("run") == replay["run"]]
    (start,) = [e for e in events if e["kind"] == "run_start"]
    assert start["detail"]["replay_of"]["run"] == recorded
    source = {e["seq"]: e for e in read_tape(sample.tape) if e.get("run") == recorded}
    exchanges = network_events(events)
    assert [e["outcome"] for e in exchanges] == ["ok", "BLOCKED", "FAIL"]
    # The two exchanges that had an answer were answered from the recording; the blocked CONNECT was
    # refused by the policy again, before any replay.
    llm, connect, flaky = exchanges
    for replayed in (llm, flaky):
        assert replayed["replay"]["mode"] == "replayed"
        assert source[replayed["replay"]["source_seq"]]["target"] == replayed["target"]
    assert connect["action"] == "http.connect" and connect.get("replay") is None
    assert replay["saved"]["calls"] == 2
    assert (replay["saved"]["input_tokens"], replay["saved"]["output_tokens"]) == (
        llm["llm"]["usage"]["input_tokens"],
        llm["llm"]["usage"]["output_tokens"],
    )
    verify = subprocess.run(
        [sys.executable, "-m", "failcore.cli", "verify", str(sample.tape)],
        env=sample.env,
        capture_output=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout.decode()
