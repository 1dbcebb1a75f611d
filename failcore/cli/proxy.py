"""`failcore proxy`: the recording proxy in the foreground, until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
from pathlib import Path
from typing import Any

from rich.console import Console

from failcore import __version__
from failcore.cli.common import (
    console,
    err_console,
    line_checker,
    print_json,
    print_run_summary,
    tape_verdict,
)
from failcore.textsafe import safe_text
from failcore.views.fmt import usd as _usd


def _replay_options(args: argparse.Namespace) -> dict[str, Any]:
    """--replay/--on-miss/--pace/--override/--ignore as the Replayer's mitmproxy options."""
    if not getattr(args, "replay", None):
        return {}
    return {
        "failcore_replay": args.replay,
        "failcore_replay_on_miss": args.on_miss,
        "failcore_replay_pace": args.pace,
        "failcore_replay_override": args.override or [],
        "failcore_replay_ignore": args.ignore or [],
    }


def replay_summary(tape: Path, run: str) -> dict[str, Any]:
    from failcore.replay.savings import replay_savings
    from failcore.runs import run_events

    return replay_savings(run_events(tape, run))


def _print_replay_summary(saved: dict[str, Any], stream: Console) -> None:
    tokens = (
        f", {saved['input_tokens'] or 0} input + {saved['output_tokens'] or 0} output tokens"
        if saved["input_tokens"] is not None or saved["output_tokens"] is not None
        else ""
    )
    usd = f", {_usd(saved['usd'])}" if saved["usd"] is not None else ""
    stream.print(safe_text(f"replay: the tape answered {saved['calls']} calls{tokens}{usd}"))


def proxy_settings(args: argparse.Namespace, *, port: int):  # type: ignore[no-untyped-def]
    from failcore.runner import ProxySettings

    return ProxySettings(
        listen_host=args.listen_host,
        listen_port=port,
        modes=args.mode or ["regular"],
        policy=args.policy,
        tape=args.tape,
        policy_mode="enforce" if args.enforce else "observe" if args.observe else None,
        run_id=args.run_id,
        confdir=Path(args.confdir).expanduser() if args.confdir else None,
        sets=args.set or [],
        quiet=not getattr(args, "verbose", False),
        extra=_replay_options(args),
    )


def env_lines(env: dict[str, str]) -> list[str]:
    # Lowercase too: curl reads only http_proxy for plain HTTP (it ignores HTTP_PROXY).
    return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


async def serve(args: argparse.Namespace) -> int:
    from failcore.runner import EmbeddedProxy, ProxyStartError

    proxy = EmbeddedProxy(proxy_settings(args, port=args.port))
    try:
        await proxy.start()
    except ProxyStartError as e:
        message = str(e)
        if "address already in use" in message:
            # mitmproxy's own hint names its --mode syntax; failcore's flag is --port.
            message = message.split("\nTry specifying", 1)[0] + (
                f"\nport {args.port} is in use: pass --port N, or --port 0 to pick a free one"
            )
        err_console.print(safe_text(f"failcore: {message}", "red", keep_newlines=True), soft_wrap=True)
        return 2
    loop = asyncio.get_running_loop()
    signals = 0
    stopping: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        # The first Ctrl-C lets open exchanges finish (2 s at most) so they reach the tape whole;
        # a second one stops at once and records them as killed.
        nonlocal signals
        signals += 1
        stopping.append(loop.create_task(proxy.stop(drain=2.0 if signals == 1 else 0.0)))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    assert proxy.ca is not None
    policy = proxy.session.policy
    info = {
        "address": proxy.url if proxy.listening else None,
        "run": proxy.session.run_id,
        "tape": str(proxy.tape_dir),
        "policy": policy.source if policy else None,
        "mode": policy.mode if policy else None,
        "ca_cert": str(proxy.ca.cert_path),
        "ca_sha256": proxy.ca.sha256,
        "env": proxy.ca.env(proxy.url) if proxy.listening and "regular" in (args.mode or ["regular"]) else {},
    }
    if args.json:
        print_json(info)
    else:
        console.print(
            f"[bold]failcore {__version__}[/] "
            + (f"listening on [cyan]{proxy.url}[/] " if proxy.listening else "capturing ")
            + f"({', '.join(args.mode or ['regular'])})"
        )
        console.print(safe_text(f"run {info['run']}  tape {info['tape']}"))
        console.print(safe_text(f"policy {info['policy']} (mode {info['mode']})"))
        console.print(safe_text(f"CA {info['ca_cert']}  sha256 {info['ca_sha256']}"))
        if info["env"]:
            console.print("Point a client at it:")
            for line in env_lines(info["env"]):
                console.print(safe_text("  " + line))
        console.print("Ctrl-C stops (after open exchanges finish, 2 s at most; twice: at once).")
    await proxy.wait()
    if args.replay and not args.json:
        _print_replay_summary(replay_summary(proxy.tape_dir, proxy.session.run_id), err_console)
    if not args.json:
        from failcore.runs import summarize_tape

        bad = line_checker()  # a line of the run edited meanwhile is named (tape/badlines.py)
        summaries = summarize_tape(proxy.tape_dir, run=proxy.session.run_id, bad=bad)
        summary = summaries[0].to_dict() if summaries else {"run": proxy.session.run_id, "requests": 0}
        summary["tape"] = str(proxy.tape_dir)
        print_run_summary(summary, stream=err_console)
        tape_verdict(bad, proxy.tape_dir)  # said on stderr; the proxy's exit status stays its own
    return 0
