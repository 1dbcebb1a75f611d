"""An agent built with each framework runs as a real process under `failcore run`: its LLM calls go
over HTTPS through the proxy to the local stand-in (trusting failcore's CA through the environment
`failcore run` sets), its tool is wrapped by one call of the integration, and the run's tape holds the
LLM call, the tool call (with the file it wrote) and the next LLM call, in that order of time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from failcore.demo.server import StandIn
from tests.helpers import REPO, read_tape
from tests.integrations.agents.notes_tool import TOOL_ARGS

AGENTS = Path(__file__).parent / "agents"
# Variables from the developer's shell that would send the agent elsewhere or change what it trusts.
NOISE = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ssl_cert_file", "ssl_cert_dir", "columns"}

pytestmark = pytest.mark.timeout(300)


def run_agent(
    script: str, api: str, upstream: StandIn, tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], Path]:
    tape, work = tmp_path / "tape", tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k.lower() not in NOISE and not k.startswith("FAILCORE_")}
    env.update(
        FAILCORE_HOME=os.environ["FAILCORE_HOME"],  # the session's home: its CA is made once
        PYTHONPATH=os.pathsep.join([str(REPO), str(AGENTS)]),
        OPENAI_AGENTS_DISABLE_TRACING="1",
    )
    command = [
        sys.executable, "-m", "failcore.cli", "run", "--tape", str(tape),
        "--set", f"ssl_verify_upstream_trusted_ca={upstream.ca_path}",
        "--", sys.executable, str(AGENTS / script), f"{upstream.url}/v1", api,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=240)
    return done, tape


@pytest.mark.parametrize(
    ("script", "api"),
    [
        ("langchain_agent.py", "chat_completions"),
        ("openai_agents_agent.py", "chat_completions"),
        ("openai_agents_agent.py", "responses"),  # the SDK's default model
    ],
)
def test_agent_under_failcore_run_records_llm_tool_llm_in_order(
    script: str, api: str, upstream: StandIn, tmp_path: Path
) -> None:
    done, tape = run_agent(script, api, upstream, tmp_path)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    # The stand-in answers the tool result with "Tool said: <result>": the tool really ran.
    assert "Tool said: saved 15 bytes to notes/meeting.txt" in done.stdout + done.stderr
    assert (tmp_path / "work" / "notes" / "meeting.txt").read_text() == TOOL_ARGS["text"]

    events = read_tape(tape)
    (run,) = {e["run"] for e in events if "run" in e and e["kind"] != "checkpoint"}
    # In the order they happened, in the tape's own order (seq): a joined child sends each tool event
    # before it goes on, and an exchange is written before its response reaches the agent.
    steps = [e for e in events if e["kind"] in ("network", "tool")]
    assert [e["kind"] for e in steps] == ["network", "tool", "network"], [e.get("action") for e in steps]
    first, tool, second = steps
    for llm, tool_calls in ((first, 1), (second, 0)):
        assert llm["outcome"] == "ok" and llm["target"]["port"] == upstream.port
        assert llm["llm"]["api"] == api and llm["llm"]["request_model"] == "gpt-4o-mini"
        assert llm["llm"]["tool_calls"] == tool_calls
    assert first["ts_end"] <= tool["ts_start"] <= tool["ts_end"] <= second["ts_start"]

    assert tool["action"] == "save_note" and tool["outcome"] == "ok" and tool["run"] == run
    assert tool["tool"]["name"] == "save_note"
    assert tool["tool"]["args"] == TOOL_ARGS  # the model's arguments, nothing the framework injected
    assert tool["tool"]["result"]["summary"] == "saved 15 bytes to notes/meeting.txt"
    assert tool["tool"]["effects"]["fs"] >= 1
    effects = [e for e in events if e["kind"] == "fs" and e["call"] == tool["call"]]
    assert "meeting.txt" in {Path(e["fs"]["path"]).name for e in effects if e["fs"]["op"] == "write"}
    verify = subprocess.run(
        [sys.executable, "-m", "failcore.cli", "verify", str(tape)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout
