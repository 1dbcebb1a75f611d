"""The `failcore` command: proxy, run, ca, list, show, tail, verify, report, diff, view, policy check,
sample."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from failcore import __version__
from failcore.paths import default_tape_dir, failcore_home
from failcore.textsafe import safe_text
from failcore.views import fmt
from failcore.views.fmt import tokens as _tokens
from failcore.views.fmt import usd as _usd

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)



def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def _tape_arg(value: str | None) -> Path:
    return Path(value).expanduser() if value else default_tape_dir()


# ---------------------------------------------------------------- proxy / run


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


def _replay_summary(tape: Path, run: str) -> dict[str, Any]:
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


def _proxy_settings(args: argparse.Namespace, *, port: int):  # type: ignore[no-untyped-def]
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


def _env_lines(env: dict[str, str]) -> list[str]:
    # Lowercase too: curl reads only http_proxy for plain HTTP (it ignores HTTP_PROXY).
    return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


async def _serve(args: argparse.Namespace) -> int:
    from failcore.runner import EmbeddedProxy, ProxyStartError

    proxy = EmbeddedProxy(_proxy_settings(args, port=args.port))
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
        "env": proxy.ca.env(proxy.url)
        if proxy.listening and "regular" in (args.mode or ["regular"])
        else {},
    }
    if args.json:
        _print_json(info)
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
            for line in _env_lines(info["env"]):
                console.print(safe_text("  " + line))
        console.print("Ctrl-C stops (after open exchanges finish, 2 s at most; twice: at once).")
    await proxy.wait()
    if args.replay and not args.json:
        _print_replay_summary(_replay_summary(proxy.tape_dir, proxy.session.run_id), err_console)
    if not args.json:
        from failcore.runs import summarize_tape

        summaries = summarize_tape(proxy.tape_dir, run=proxy.session.run_id)
        summary = summaries[0].to_dict() if summaries else {"run": proxy.session.run_id, "requests": 0}
        summary["tape"] = str(proxy.tape_dir)
        _print_run_summary(summary, stream=err_console)
    return 0


async def _run_command(args: argparse.Namespace) -> int:
    from failcore.runner import EmbeddedProxy, ProxyStartError

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        err_console.print("failcore run: give a command after --, e.g. failcore run -- python agent.py")
        return 2
    if args.contain:
        return await _run_contained(args, command)
    settings = _proxy_settings(args, port=0)
    settings.proxy_auth = True  # other local users cannot use this run's proxy (and write into its tape)
    proxy = EmbeddedProxy(settings)
    try:
        await proxy.start()
    except ProxyStartError as e:
        err_console.print(safe_text(f"failcore: {e}", "red", keep_newlines=True), soft_wrap=True)
        return 2
    assert proxy.ca is not None
    env = dict(os.environ)
    if proxy.listening:
        env.update(proxy.ca.env(proxy.client_url, args.no_proxy))
    else:  # local capture only: nothing to point a client at, it only needs to trust the CA
        env.update({k: v for k, v in proxy.ca.env("").items() if "PROXY" not in k.upper()})
    env["FAILCORE_RUN_ID"] = proxy.session.run_id
    try:
        child = await _spawn(command, env, json_output=args.json)
    except OSError as e:
        await proxy.stop()
        err_console.print(safe_text(f"failcore run: cannot start {command[0]}: {e}", "red"))
        return 127
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda s=sig: child.returncode is None and child.send_signal(s))
    code = await child.wait()
    await proxy.stop()
    return _finish_run(args, proxy, code)


async def _spawn(command: Sequence[str], env: dict[str, str], *, json_output: bool) -> Any:
    # With --json, stdout carries failcore's JSON only: the command's stdout goes to stderr.
    stdout = sys.stderr.fileno() if json_output else None
    return await asyncio.create_subprocess_exec(*command, env=env, stdout=stdout)


def _finish_run(args: argparse.Namespace, proxy: Any, code: int, **extra: Any) -> int:
    from failcore.runs import summarize_tape

    summaries = summarize_tape(proxy.tape_dir, run=proxy.session.run_id)
    summary = summaries[0].to_dict() if summaries else {"run": proxy.session.run_id, "requests": 0}
    summary["exit_code"] = code
    summary["tape"] = str(proxy.tape_dir)
    summary.update(extra)
    if args.replay:
        summary["replay_saved"] = _replay_summary(proxy.tape_dir, proxy.session.run_id)
    summary["warnings"] = run_warnings(summary)
    if args.json:
        _print_json(summary)
    else:
        _print_run_summary(summary, stream=err_console)
    return code if code >= 0 else 128 - code


def run_warnings(s: dict[str, Any]) -> list[str]:
    """What a person must know about a run that the counts alone do not say."""
    out = []
    contained = s.get("contained")
    if not s.get("requests") and not s.get("tls_failures") and not contained:
        out.append(
            "the command made no request through failcore: if it talks to the network, it ignores the "
            "proxy variables (see README, 'Which clients honour the proxy variables'); "
            "`failcore run --contain -- CMD` captures every connection whatever the client"
        )
    if s.get("tls_failures"):
        hosts = ", ".join(sorted(s.get("tls_failed_hosts") or {}))
        out.append(
            f"{s['tls_failures']} TLS handshake(s) failed ({hosts}): the client does not trust "
            "failcore's CA. `failcore ca` prints its certificate and the trust variables (SSL_CERT_FILE, "
            "REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, NODE_EXTRA_CA_CERTS); a client with its own CA store "
            "must be given it"
            + ("" if contained else "; `failcore run --contain` records every connection")
        )
    if s.get("leftovers"):
        out.append("could not remove: " + "; ".join(s["leftovers"]))
    return out


async def _run_contained(args: argparse.Namespace, command: list[str]) -> int:
    """CMD in a network namespace whose only way out is this failcore (see failcore.contain)."""
    from failcore import contain
    from failcore.runner import EmbeddedProxy, ProxyStartError

    def fail(message: str) -> int:
        err_console.print(safe_text(f"failcore run --contain: {message}", "red"), soft_wrap=True)
        return 2

    if args.mode:
        return fail("--contain sets failcore's listeners itself (transparent + DNS); leave out --mode")
    problem = contain.missing_prerequisites()
    if problem:
        return fail(problem)
    loop = asyncio.get_running_loop()
    child: Any = None
    interrupted: list[int] = []

    def on_signal(sig: int) -> None:
        if child is not None and child.returncode is None:
            child.send_signal(sig)
        else:
            interrupted.append(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        netns = await asyncio.to_thread(contain.Containment.create)
    except contain.ContainError as e:
        return fail(str(e))
    proxy: Any = None
    refused: Any = None
    code: int | None = None
    try:
        if interrupted:
            return 128 + interrupted[0]
        settings = _proxy_settings(args, port=0)
        settings.listen_host = netns.host_ip
        tcp_port = contain.free_port(netns.host_ip)
        dns_port = contain.free_port(netns.host_ip, udp_too=True)
        settings.modes = [f"transparent@{netns.host_ip}:{tcp_port}", f"dns@{netns.host_ip}:{dns_port}"]
        # Lazy: failcore connects upstream only for what it lets through (a blocked raw TCP stream
        # or request never even opens a connection to its destination).
        settings.extra.update(failcore_raw_tcp="block", connection_strategy="lazy")
        proxy = EmbeddedProxy(settings)
        try:
            await proxy.start()
        except ProxyStartError as e:
            proxy = None
            return fail(str(e))
        await asyncio.to_thread(netns.route, tcp_port, dns_port)
        refused = contain.RefusedPacketLog(netns, proxy.session.record, proxy.session.run_id)
        loop.add_reader(refused.fileno(), refused.read)
        assert proxy.ca is not None
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        # The client needs to trust failcore's CA, not to know about a proxy (it has no other way out).
        env.update({k: v for k, v in proxy.ca.env("").items() if "PROXY" not in k.upper()})
        env["FAILCORE_RUN_ID"] = proxy.session.run_id
        if not interrupted:
            try:
                child = await _spawn(netns.command(command), env, json_output=args.json)
            except OSError as e:
                return fail(f"cannot start {command[0]}: {e}")
            code = await child.wait()
    except (contain.ContainError, OSError) as e:
        return fail(str(e))
    finally:
        if refused is not None:
            loop.remove_reader(refused.fileno())
            refused.close()
        if proxy is not None:
            await proxy.stop()
        leftovers = await asyncio.to_thread(netns.close)
        if leftovers and (code is None or proxy is None):
            err_console.print(
                safe_text("failcore run --contain: could not remove " + "; ".join(leftovers), "red")
            )
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if code is None:
        err_console.print("failcore run --contain: interrupted before the command started")
        return 128 + (interrupted[0] if interrupted else signal.SIGINT)
    return _finish_run(args, proxy, code, contained=True, leftovers=leftovers)


def _print_run_summary(s: dict[str, Any], stream: Console = console) -> None:
    from failcore.views.tables import run_summary_table

    stream.print(run_summary_table(s))
    for warning in s.get("warnings") or ():
        stream.print(safe_text(f"warning: {warning}", "yellow"), soft_wrap=True)


# ---------------------------------------------------------------- ca


def cmd_ca(args: argparse.Namespace) -> int:
    from failcore.ca import ensure_ca

    info = ensure_ca(Path(args.confdir).expanduser() if args.confdir else None)
    proxy_url = f"http://127.0.0.1:{args.port}"
    data = {
        "confdir": str(info.confdir),
        "cert": str(info.cert_path),
        "bundle": str(info.bundle_path),
        "sha256": info.sha256,
        "env": info.env(proxy_url),
    }
    if args.json:
        _print_json(data)
        return 0
    console.print(safe_text(f"CA certificate  {info.cert_path}"))
    console.print(safe_text(f"SHA-256         {info.sha256}"))
    console.print(safe_text(f"trust bundle    {info.bundle_path} (certifi + failcore CA)"))
    console.print(f"Environment for a client of a proxy on {proxy_url}:")
    for line in _env_lines(data["env"]):
        console.print(safe_text("  " + line))
    return 0


# ---------------------------------------------------------------- list / show / tail


@contextlib.contextmanager
def _reading(tape: Path) -> Iterator[None]:
    """A spinner on the terminal (stderr) while a whole tape is read: a big one takes seconds."""
    if not err_console.is_terminal:
        yield
        return
    size = sum(p.stat().st_size for p in tape.glob("seg-*.jsonl"))
    with err_console.status(safe_text(f"reading {tape} ({fmt.size(size)})…")):
        yield


def cmd_list(args: argparse.Namespace) -> int:
    from failcore.runs import summarize_tape

    tape = _tape_arg(args.tape)
    if not tape.exists():
        err_console.print(safe_text(f"failcore: no tape at {tape}"))
        return 1
    with _reading(tape):
        runs = summarize_tape(tape)
    if args.json:
        _print_json([r.to_dict() for r in runs])
        return 0
    from failcore.views.tables import runs_table

    table = runs_table(f"runs in {tape}", runs, console.width)
    console.print(table)
    return 0


class _NoRun(Exception):
    """The run asked for cannot be shown; `code` is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _resolve_run(tape: Path, run: str | None, last: bool) -> str:
    """The run named (in full, or by a unique prefix or suffix), or the last one. Raises _NoRun: exit 1
    for a tape without runs, 2 for a name that matches no run or several."""
    from failcore.runs import UnknownRun, last_run_id, resolve_run

    if not tape.exists():
        raise _NoRun(f"failcore: no tape at {tape}", 1)
    if last or not run:
        found = last_run_id(tape)
        if found is None:
            raise _NoRun(f"failcore: no runs in {tape}", 1)
        return found
    try:
        return resolve_run(tape, run)
    except UnknownRun as e:
        raise _NoRun(f"failcore: {e}", 2) from None


def _find_event(events: Iterable[dict[str, Any]], wanted: str) -> dict[str, Any] | None:
    """An event by its seq (unique on a tape) or its flow id (in full, or a unique prefix)."""
    if wanted.isdigit():
        return next((ev for ev in events if ev.get("seq") == int(wanted)), None)
    found = [ev for ev in events if str(ev.get("flow") or "").startswith(wanted)]
    return found[0] if len({ev.get("flow") for ev in found}) == 1 else None


def cmd_show(args: argparse.Namespace) -> int:
    from failcore.runs import RunSummary, run_events
    from failcore.views.tables import events_table

    tape = _tape_arg(args.tape)
    try:
        # An event is named by seq or flow, which a tape never repeats: without a run, look everywhere.
        everywhere = args.event is not None and not args.run and not args.last
        run = None if everywhere else _resolve_run(tape, args.run, args.last)
    except _NoRun as e:
        err_console.print(safe_text(str(e)))
        return e.code
    if args.event is not None:
        ev = _find_event(run_events(tape, run), args.event)
        if ev is None:
            where = f"run {run}" if run else str(tape)
            err_console.print(safe_text(f"failcore: no event {args.event} in {where}"))
            return 2
        if args.json:
            _print_json(ev)
        else:
            text = orjson.dumps(ev, option=orjson.OPT_INDENT_2).decode()
            console.print(safe_text(text, keep_newlines=True))
        return 0
    assert run is not None
    with _reading(tape):
        events = [ev for ev in run_events(tape, run) if ev.get("kind") not in ("checkpoint",)]
    if args.json:
        _print_json(events)
        return 0
    totals = RunSummary(run=run)
    for ev in events:
        totals.add(ev)
    console.print(events_table(f"run {run}", events, console.width))
    if totals.llm_calls:
        console.print(
            safe_text(
                f"{totals.llm_calls} LLM call(s): {_tokens(totals.input_tokens, totals.output_tokens)} "
                f"tokens in/out, {_usd(totals.cost_usd, totals.unpriced_calls)}"
            )
        )
    if totals.dlp_hits:
        console.print(
            safe_text(
                f"{totals.dlp_hits} DLP hit(s) in {totals.dlp_exchanges} exchange(s) "
                "(column dlp; red: a BLOCK rule matched)",
                "yellow",
            )
        )
    console.print(
        safe_text(
            f"* = a BLOCK rule matched but the exchange was let through (observe mode). "
            f"One event in full: failcore show --tape {tape} --event SEQ"
        )
    )
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from collections import deque

    from failcore.tape import follow, iter_events
    from failcore.views.tables import event_line

    tape = _tape_arg(args.tape)
    if not tape.exists():
        err_console.print(safe_text(f"failcore: no tape at {tape}"))
        return 1

    def emit(ev: dict[str, Any]) -> None:
        if args.json:
            sys.stdout.write(orjson.dumps(ev).decode() + "\n")
            sys.stdout.flush()
            return
        console.print(event_line(ev))

    for ev in deque(iter_events(tape, on_bad_line=lambda line, why: None), maxlen=args.lines):
        emit(ev)
    if args.follow:
        with contextlib.suppress(KeyboardInterrupt):
            for ev in follow(tape, from_end=True):
                emit(ev)
    return 0


# ---------------------------------------------------------------- verify / policy


# What each `failcore verify` exit code proves (also in `failcore verify --help` and the README).
VERIFY_EXIT = {"ok": 0, "broken": 1, "incomplete": 3, "unsigned": 4, "unknown_key": 5, "dropped": 6}
VERIFY_EPILOG = """\
exit codes (what each one proves):
  0 OK          every line is chained and signed, to its writer's final checkpoint, by a trusted key
                (--key, or this user's own: FAILCORE_HOME or ~/.failcore, and ~/.mitmproxy for tapes
                older versions wrote under mitmdump); nothing was dropped. It does not prove that whole
                runs were not removed from the end together with the manifest: compare the head
                (seq and hash, printed here) with one you kept or sent elsewhere.
  1 BROKEN      a line was edited, deleted, inserted or reordered, a segment is missing, a signature
                or the signed manifest does not match, or lines were removed from its end.
  2             verify could not run (no tape, unreadable key file, bad arguments).
  3 INCOMPLETE  intact up to its last signed checkpoint, but the tape does not end with its writer's
                final checkpoint: the writer is still running, was killed (SIGKILL, crash: its last
                events are unsigned until the next run's first checkpoint) or the end was cut off.
                Lines after the last checkpoint are not signed: anyone could have written them.
  4 UNSIGNED    intact, but no checkpoint signature was checked (none yet, or no key to check with).
  5 UNKNOWN KEY intact, but signed by a key failcore does not trust (e.g. only a key stored in the
                tape itself: anyone can put one there). Pass --key FILE if you trust it.
  6 DROPPED     complete and signed, but the writer recorded that it lost events (disk full, queue
                full): the tape is not a full record.
"""


def cmd_verify(args: argparse.Namespace) -> int:
    from failcore.tape.keys import KeyFileError, load_public_key
    from failcore.tape.verify import TrustedKey, local_identities, verify_tape

    tape = _tape_arg(args.tape)
    if not tape.is_dir():
        err_console.print(safe_text(f"failcore: no tape at {tape}"))
        return 2
    trusted: list[TrustedKey] = []
    for path in args.key or []:
        try:
            trusted.append(TrustedKey(load_public_key(Path(path).expanduser()), str(path)))
        except (KeyFileError, OSError) as e:
            err_console.print(safe_text(f"failcore: cannot read key {path}: {e}"))
            return 2
    if not trusted:
        trusted = local_identities(signing_homes())
    report = verify_tape(tape, trusted_keys=trusted, trust_tape_keys=args.tape_key)
    if args.json:
        _print_json(report.to_dict())
    else:
        _print_verify(report, tape)
    return VERIFY_EXIT[report.status]


def signing_homes() -> list[Path]:
    """Where this user's signing keys live: failcore's home, and mitmproxy's default confdir (where
    older versions started as a mitmdump addon kept theirs)."""
    return [failcore_home(), Path("~/.mitmproxy").expanduser()]


def _print_verify(report: Any, tape: Path) -> None:
    head = f"{report.lines} lines in {report.segments} segment(s), {report.checkpoints} signed checkpoint(s)"
    status = report.status
    if status == "ok":
        console.print(
            safe_text(f"OK  {tape}: chain intact and signed to its final checkpoint, {head}", "green")
        )
    elif status == "broken":
        console.print(safe_text(f"BROKEN  {tape}: {head}", "bold red"))
        b = report.first_break
        if b is not None:
            console.print(
                safe_text(f"  first break: {b.segment} line {b.line} ({b.kind}): {b.message}", "red"),
                soft_wrap=True,
            )
    elif status == "unknown_key":
        console.print(
            safe_text(f"UNKNOWN KEY  {tape}: chain intact but not signed by a trusted key, {head}", "red")
        )
    elif status == "unsigned":
        console.print(safe_text(f"UNSIGNED  {tape}: chain intact but no signature checked, {head}", "yellow"))
    elif status == "incomplete":
        console.print(
            safe_text(
                f"INCOMPLETE  {tape}: chain intact, no final checkpoint at its end (unsigned tail), {head}",
                "yellow",
            ),
            soft_wrap=True,
        )
    else:
        console.print(
            safe_text(
                f"DROPPED  {tape}: chain intact and signed, but {report.dropped} event(s) were lost, {head}",
                "red",
            ),
            soft_wrap=True,
        )
    for segment, line in report.truncated:
        console.print(
            safe_text(
                f"  truncated: {segment} line {line} is an incomplete final line (the writer was killed "
                "mid-write); everything before it verifies",
                "yellow",
            )
        )
    if report.unsigned_tail:
        console.print(
            safe_text(
                f"  {report.unsigned_tail} line(s) after the last checkpoint are chained but not signed: "
                "they could have been written by anyone"
            ),
            soft_wrap=True,
        )
    if status == "incomplete" and not report.unsigned_tail and not report.truncated:
        console.print(
            safe_text("  the last checkpoint does not name itself final: the tape may have been cut there")
        )
    if report.writer_pid:
        console.print(safe_text(f"  a writer (pid {report.writer_pid}) is recording to this tape right now"))
    if status != "broken" and report.dropped and status != "dropped":
        console.print(safe_text(f"  {report.dropped} event(s) were dropped by the writer", "red"))
    signer = report.unknown_signer
    if signer is not None:
        where = "a key stored in the tape itself" if signer.in_tape else "a key found nowhere"
        console.print(
            safe_text(
                f"  {signer.segment} line {signer.line}: checkpoint signed by key "
                f"{signer.key_id[:16]}… ({where})",
                "red",
            ),
            soft_wrap=True,
        )
        console.print(
            safe_text("  if you trust that key: --key FILE (its .pub), or --tape-key to accept the tape's"),
            soft_wrap=True,
        )
    if status in ("unknown_key", "unsigned", "broken"):
        if report.trusted_keys:
            for key_id, source in report.trusted_keys:
                console.print(safe_text(f"  trusted key {key_id[:16]}… from {source}"), soft_wrap=True)
        else:
            console.print(
                safe_text(
                    f"  no trusted key: none in {', '.join(str(h) for h in signing_homes())}; pass --key FILE"
                ),
                soft_wrap=True,
            )
    if report.key_source == "tape":
        console.print(
            safe_text(
                "  --tape-key: keys stored in the tape were trusted: this proves consistency, "
                "not who wrote it"
            )
        )
    if report.head_h:
        console.print(safe_text(f"  head: seq {report.head_seq} h {report.head_h}"), soft_wrap=True)


def cmd_policy_check(args: argparse.Namespace) -> int:
    from failcore.policy.load import check_policy
    from failcore.shipped import resolve_policy

    results = {str(p): [str(x) for x in check_policy(resolve_policy(p))] for p in args.files}
    if args.json:
        _print_json({"ok": not any(results.values()), "files": results})
    else:
        for path, problems in results.items():
            if problems:
                for problem in problems:
                    # One problem per line even when piped (80 columns): `file:line:col: message` is grepped.
                    console.print(safe_text(problem, "red"), soft_wrap=True)
            else:
                console.print(safe_text(f"{path}: OK", "green"), soft_wrap=True)
    return 1 if any(results.values()) else 0


def cmd_sample(args: argparse.Namespace) -> int:
    from failcore.sample import run_sample

    return asyncio.run(
        run_sample(json_output=args.json, tape=Path(args.tape).expanduser() if args.tape else None)
    )


def cmd_report(args: argparse.Namespace) -> int:
    from failcore.report import (
        REPORT_FILE_MODE,
        REPORT_WITH_BODIES_MODE,
        ReportError,
        collect_report,
        render_report,
        write_report,
    )
    from failcore.tape.keys import load_public_key

    tape = _tape_arg(args.tape)
    if not tape.is_dir():
        err_console.print(safe_text(f"failcore: no tape at {tape}"))
        return 1
    try:
        run = _resolve_run(tape, args.run, args.last)
    except _NoRun as e:
        err_console.print(safe_text(str(e)))
        return e.code
    key = None
    if args.key:
        key = load_public_key(Path(args.key))
    elif not args.tape_key and (failcore_home() / "failcore-signing.pub").exists():
        key = load_public_key(failcore_home() / "failcore-signing.pub")

    def progress(what: str) -> None:
        status.update(safe_text(what))

    try:
        with err_console.status(safe_text(f"reading run {run}"), spinner="dots") as status:
            report = collect_report(
                tape,
                run,
                public_key=key,
                max_events=args.max_events,
                bodies=args.bodies,
                progress=progress,
            )
            status.update("writing the report")
            html_text = render_report(report)
    except ReportError as e:
        err_console.print(safe_text(f"failcore: {e}"))
        return 1
    mode = REPORT_WITH_BODIES_MODE if args.bodies else REPORT_FILE_MODE
    out = write_report(html_text, Path(args.output).expanduser(), mode=mode)
    chain = "OK" if report.verification.ok else "BROKEN"
    left_out = sum(report.omitted.values())
    if args.json:
        _print_json(
            {
                "run": run,
                "output": str(out),
                "events": len(report.timeline),
                "events_read": report.events_read,
                "left_out": report.omitted,
                "bodies": args.bodies,
                "chain": chain,
            }
        )
    else:
        console.print(safe_text(f"report for run {run} written to {out} (tape chain {chain})"))
        if left_out:
            console.print(
                safe_text(
                    f"  bounded by --max-events {args.max_events}: {left_out:,} row(s) left out "
                    f"({', '.join(f'{k} {v:,}' for k, v in report.omitted.items())}); "
                    "counts cover the whole run"
                )
            )
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from failcore.tui.app import run_viewer

    tape = _tape_arg(args.tape)
    if not tape.exists() and args.follow:
        # Started before the proxy (the usual order in two terminals): wait for the tape to appear.
        err_console.print(safe_text(f"failcore: waiting for a tape at {tape} (Ctrl-C to stop)"))
        try:
            while not any(tape.glob("seg-*.jsonl")):
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 130
    if not tape.exists():
        err_console.print(safe_text(f"failcore: no tape at {tape} (with -f, view waits for it)"))
        return 1
    return run_viewer(tape, follow=args.follow, cache=not args.no_cache)


def cmd_diff(args: argparse.Namespace) -> int:
    from failcore.diff import diff_runs

    tape = _tape_arg(args.tape)
    try:
        result = diff_runs(tape, args.run_a, args.run_b, args.ignore or [])
    except ValueError as e:
        err_console.print(safe_text(f"failcore diff: {e}", "red"))
        return 2
    data = result.to_dict()
    if args.json:
        _print_json(data)
    else:
        _print_diff(data)
    return 1 if result.diverged else 0


def _print_diff(d: dict[str, Any]) -> None:
    say = console.print
    counts = d["requests"]
    say(safe_text(f"diff {d['run_a']} → {d['run_b']}: {counts['a']} vs {counts['b']} requests"))
    if not d["diverged"]:
        say(safe_text("same shape: no divergence", "green"))
    first = d["first_divergence"]
    if first is not None and first["kind"] == "request":
        a, b = first["a"], first["b"]
        say(safe_text(f"first divergence: #{a['seq']} → #{b['seq']} {b['summary']}", "yellow"))
        say(safe_text(f"  {first['where']} {first.get('pointer') or ''}".rstrip()))
        for side, label in (("recorded", "A"), ("live", "B")):
            absent = first.get(f"{side}_absent")
            value = "(absent)" if absent else orjson.dumps(first.get(side)).decode()
            say(safe_text(f"  {label}: {value}"))
    elif first is not None:
        side = "a" if first["kind"] == "only_in_a" else "b"
        say(safe_text(f"first divergence: only in {side.upper()}: {first[side]['summary']}", "yellow"))
    for side in ("a", "b"):
        if hosts := d[f"hosts_only_in_{side}"]:
            say(safe_text(f"hosts only in {side.upper()}: {', '.join(hosts)}"))
    for change in d["decision_changes"]:
        say(safe_text(f"decision {change['b']['summary']}: {change['from']} → {change['to']}", "yellow"))
    for change in d["status_changes"]:
        say(safe_text(f"status {change['b']['summary']}: {change['from']} → {change['to']}"))
    delta = d["totals"]["delta"]
    if any(delta.values()):
        usd = f", ${delta['usd']:+.6f}" if delta["usd"] is not None else ""
        tokens = f"{delta['input_tokens'] or 0:+d} in / {delta['output_tokens'] or 0:+d} out"
        say(safe_text(f"tokens {tokens}{usd}"))


def cmd_policy_list(args: argparse.Namespace) -> int:
    from failcore.shipped import policies_dir, shipped_policy_names

    names = shipped_policy_names()
    if args.json:
        _print_json({"dir": str(policies_dir()), "policies": names})
        return 0
    console.print(safe_text(f"shipped policies (in {policies_dir()}); use --policy NAME:"), soft_wrap=True)
    for name in names:
        console.print(safe_text(f"  {name}"), soft_wrap=True)
    return 0


def cmd_addon_path(args: argparse.Namespace) -> int:
    from failcore.shipped import addon_path

    # Plain print: the output is meant for $(...), with no styling or wrapping.
    print(addon_path())
    return 0


# ---------------------------------------------------------------- parser


def _add_proxy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policy",
        help="policy YAML path, or a shipped policy's name (strict, examples/dlp, …: see `failcore policy "
        "list`); default: default, observe mode",
    )
    p.add_argument("--tape", help=f"tape directory (default: {default_tape_dir()})")
    p.add_argument("--listen-host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--mode",
        action="append",
        help="mitmproxy mode: regular (default), transparent, local[:PROCESS], wireguard, … (repeatable)",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--enforce", action="store_true", help="override the policy: block what it blocks")
    group.add_argument("--observe", action="store_true", help="override the policy: only record would-blocks")
    p.add_argument("--run-id", help="run id for the events (default: generated)")
    p.add_argument(
        "--confdir",
        help=f"where the CA lives (default: {failcore_home()}; the tape signing key is always there)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="any mitmproxy or failcore option, as with mitmdump (repeatable)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output (run: the JSON summary alone on stdout, the command's stdout goes "
        "to stderr)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show mitmproxy's info messages")
    p.add_argument(
        "--replay", metavar="TAPE[:RUN]", help="answer matching requests from a recorded run (default: last)"
    )
    p.add_argument(
        "--on-miss", choices=("live", "fail"), default="live", help="unmatched: go live or fail (599)"
    )
    p.add_argument(
        "--pace", choices=("fast", "recorded"), default="fast", help="streamed answers: fast or as recorded"
    )
    p.add_argument(
        "--override", action="append", metavar="N=FILE", help="answer the N-th request with FILE (repeatable)"
    )
    p.add_argument(
        "--ignore",
        action="append",
        metavar="POINTER",
        help="JSON pointer to leave out when matching request bodies ('*' = any key; repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="failcore", description=__doc__)
    parser.add_argument("--version", action="version", version=f"failcore {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("proxy", help="run the recording proxy")
    _add_proxy_args(p)
    p.add_argument("--port", type=int, default=8080, help="listen port (default 8080; 0 picks a free one)")

    p = sub.add_parser("run", help="run a command with all its HTTP(S) through a fresh failcore proxy")
    _add_proxy_args(p)
    p.add_argument("--no-proxy", default="", help="NO_PROXY value for the command (default: capture all)")
    p.add_argument(
        "--contain",
        action="store_true",
        help="run the command in a network namespace whose only way out is failcore: every TCP "
        "connection is recorded whatever the client, DNS goes through failcore, anything else is "
        "refused and recorded (Linux, root, iproute2 + iptables)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS…")

    p = sub.add_parser("ca", help="show (and on first use create) failcore's CA")
    p.add_argument("--confdir", help=f"where the CA lives (default: {failcore_home()})")
    p.add_argument("--port", type=int, default=8080, help="proxy port to use in the printed environment")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("list", help="runs on a tape")
    p.add_argument("--tape", help=TAPE_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = sub.add_parser("show", help="events of a run (or one event in full)")
    p.add_argument("run", nargs="?", help="run id (default: the last run)")
    p.add_argument("--last", action="store_true", help="the most recent run")
    p.add_argument(
        "--event",
        metavar="SEQ|FLOW",
        help="show one event in full, by its seq or flow id (any run of the tape when no run is given)",
    )
    p.add_argument("--tape", help=TAPE_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = sub.add_parser("tail", help="last events of a tape; -f follows a running proxy")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing events as they are written")
    p.add_argument("-n", "--lines", type=int, default=20, help="how many of the last events (default 20)")
    p.add_argument("--tape", help=TAPE_HELP)
    p.add_argument("--json", action="store_true", help="one JSON event per line")

    p = sub.add_parser(
        "verify",
        help="check a tape's chain, signatures and end (exit 0 OK, 1 broken, 3 incomplete, 4 unsigned, "
        "5 unknown key, 6 dropped)",
        description="Check a tape's hash chain, checkpoint signatures, signed manifest and final checkpoint.",
        epilog=VERIFY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("tape", nargs="?", help=f"tape directory (default: {default_tape_dir()})")
    p.add_argument(
        "--key",
        action="append",
        metavar="FILE",
        help="trust only this public key (repeatable; default: this user's keys, see exit code 0)",
    )
    p.add_argument(
        "--tape-key",
        action="store_true",
        help="also trust keys stored in the tape (proves consistency, not authorship)",
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("report", help="one self-contained HTML report of a run, safe to share")
    p.add_argument("run", nargs="?", help="run id (default: the last run)")
    p.add_argument("--last", action="store_true", help="the most recent run")
    p.add_argument("--tape", help=TAPE_HELP)
    p.add_argument("-o", "--output", default="failcore-report.html", help="HTML file to write")
    p.add_argument("--key", help="public key to check the tape's signatures with (default: this machine's)")
    p.add_argument("--tape-key", action="store_true", help="trust the public key stored in the tape")
    p.add_argument(
        "--max-events",
        type=int,
        default=5000,
        help="most rows in any list of the report: timeline, waterfall, blocked, DLP hits, LLM calls… "
        "(default 5000; counts always cover the whole run and the page says what was left out)",
    )
    p.add_argument(
        "--bodies",
        action="store_true",
        help="include request/response bodies as recorded (DLP-masked) and LLM conversations; "
        "the file is then written 0600",
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("diff", help="where run B first departs from run A (exit 0 same shape, 1 diverged)")
    p.add_argument("run_a", help="the reference run (id, or a unique prefix/suffix of it)")
    p.add_argument("run_b", help="the run compared with it")
    p.add_argument("--tape", help=TAPE_HELP)
    p.add_argument("--ignore", action="append", metavar="POINTER", help="JSON pointer to ignore (repeatable)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("policy", help="policy tools")
    psub = p.add_subparsers(dest="policy_cmd", required=True)
    pc = psub.add_parser("check", help="validate policy files (errors name file:line:column)")
    pc.add_argument("files", nargs="+", help="policy files, or shipped policies' names")
    pc.add_argument("--json", action="store_true")
    pl = psub.add_parser("list", help="the policies shipped with failcore, by the name --policy accepts")
    pl.add_argument("--json", action="store_true")

    sub.add_parser(
        "addon-path",
        help="print the path of failcore's mitmproxy addon script: mitmdump -s \"$(failcore addon-path)\"",
    )

    p = sub.add_parser("view", help="browse a tape interactively (runs → events → one event)")
    p.add_argument("tape", nargs="?", help=f"tape directory (default: {default_tape_dir()})")
    p.add_argument("-f", "--follow", action="store_true", help="show new events as a proxy writes them")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the index cache")

    p = sub.add_parser("sample", help="offline demo: a local LLM stand-in, the proxy and an agent")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tape", help="where to write the demo's tape (default: ~/.failcore/sample-tape)")
    for name, command in sub.choices.items():
        if name in EXAMPLES:
            examples = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
            command.epilog = f"{command.epilog}\n\n{examples}" if command.epilog else examples
            command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


TAPE_HELP = f"tape directory (default: {default_tape_dir()})"
JSON_HELP = "machine-readable output (JSON on stdout)"
EXAMPLES: dict[str, tuple[str, ...]] = {
    "proxy": ("failcore proxy --policy strict", "failcore proxy --port 0 --enforce --tape /tmp/t"),
    "run": ("failcore run -- python agent.py", "failcore run --policy examples/dlp --json -- ./agent.sh"),
    "ca": ("failcore ca", "failcore ca --port 8080 --json"),
    "list": ("failcore list", "failcore list --tape /var/lib/failcore/tape --json"),
    "show": ("failcore show --last", "failcore show run-2026 --event 12", "failcore show --event 12 --json"),
    "tail": ("failcore tail -n 50", "failcore tail -f --json | jq .summary"),
    "verify": ("failcore verify", "failcore verify /var/lib/failcore/tape --key signing.pub"),
    "report": ("failcore report --last -o report.html", "failcore report run-2026 --max-events 1000"),
    "diff": ("failcore diff run-a run-b", "failcore diff run-a run-b --ignore /metadata/user_id --json"),
    "view": ("failcore view", "failcore view -f /var/lib/failcore/tape"),
    "sample": ("failcore sample", "failcore sample --json --tape /tmp/sample"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "ca": cmd_ca,
        "list": cmd_list,
        "show": cmd_show,
        "tail": cmd_tail,
        "verify": cmd_verify,
        "report": cmd_report,
        "sample": cmd_sample,
        "view": cmd_view,
        "diff": cmd_diff,
        "addon-path": cmd_addon_path,
    }
    if args.cmd in ("proxy", "run"):
        try:
            return asyncio.run(_serve(args) if args.cmd == "proxy" else _run_command(args))
        except KeyboardInterrupt:  # Ctrl-C before the command's own handlers are in place (start-up)
            err_console.print(f"failcore {args.cmd}: interrupted")
            return 130
    if args.cmd == "policy":
        return cmd_policy_list(args) if args.policy_cmd == "list" else cmd_policy_check(args)
    return handlers[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
