"""`failcore run -- CMD`: a command with all its HTTP(S) through a fresh failcore proxy (or, with
--contain, in a network namespace whose only way out is failcore)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from failcore.cli.common import err_console, line_checker, print_json, print_run_summary
from failcore.cli.proxy import proxy_settings, replay_summary
from failcore.textsafe import safe_text


async def run_command(args: argparse.Namespace) -> int:
    from failcore import quickstart
    from failcore.quickstart import QuickStart
    from failcore.runner import EmbeddedProxy, ProxyStartError

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        err_console.print("failcore run: give a command after --, e.g. failcore run -- python agent.py")
        return 2
    if args.contain:
        return await _run_contained(args, command)
    settings = proxy_settings(args, port=0)
    settings.proxy_auth = True  # other local users cannot use this run's proxy (and write into its tape)
    proxy = EmbeddedProxy(settings)
    first = first_segment(proxy.tape_dir)
    # The command starts while mitmproxy loads, on a socket bound first (see failcore.quickstart).
    quick = QuickStart(proxy) if quickstart.applies(settings) else None
    try:
        if quick is not None:
            quick.prepare()
        else:
            await proxy.start()
    except ProxyStartError as e:
        err_console.print(safe_text(f"failcore: {e}", "red", keep_newlines=True), soft_wrap=True)
        return 2
    assert proxy.ca is not None
    env = dict(os.environ)
    if quick is not None or proxy.listening:
        env.update(proxy.ca.env(proxy.client_url, args.no_proxy))
    else:  # local capture only: nothing to point a client at, it only needs to trust the CA
        env.update({k: v for k, v in proxy.ca.env("").items() if "PROXY" not in k.upper()})
    env["FAILCORE_RUN_ID"] = proxy.run_id
    channel = await _open_channel(proxy, env, quick.policy_path if quick is not None else None)
    try:
        child = await _spawn(command, env, json_output=args.json)
    except OSError as e:
        await channel.close()
        if quick is not None:
            quick.abandon()
        else:
            await proxy.stop()
        err_console.print(safe_text(f"failcore run: cannot start {command[0]}: {e}", "red"))
        return 127
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda s=sig: child.returncode is None and child.send_signal(s))
    if quick is not None:
        try:
            # A child that joined the run (failcore.run()) has events to write through the proxy.
            if not await quick.follow(child, needs_proxy=channel.used):
                await channel.close()  # finished before mitmproxy loaded: its run is on the tape
                return _finish_run(args, proxy, await child.wait(), first=first)
        except ProxyStartError as e:
            await channel.close()
            quick.close()
            if child.returncode is None:
                child.terminate()
            await child.wait()
            err_console.print(
                safe_text(f"failcore: {e}\n(the command was stopped)", "red", keep_newlines=True),
                soft_wrap=True,
            )
            return 2
    code = await child.wait()
    await channel.close()
    await proxy.stop()
    return _finish_run(args, proxy, code, first=first)


async def _open_channel(proxy: Any, env: dict[str, str], policy_path: Path | None) -> Any:
    """The socket a child's `failcore.run()` joins this run through (tool, file, process events)."""
    from failcore.runtime.channel import EventChannel
    from failcore.runtime.events import apply_dlp

    def record(event: dict[str, Any]) -> None:
        # Masked with this run's DLP rules on the tape writer's thread, before it is written. The session
        # is made at the first event: a run without one (the quick path) never imports it.
        session = proxy.session
        session.record(lambda: apply_dlp(event, session.dlp, session.salt))

    channel = EventChannel(proxy.run_id, record)
    await channel.start()
    env.update(channel.env())
    env["FAILCORE_TAPE"] = str(proxy.tape_dir)
    if policy_path is None and proxy.session.policy is not None:
        policy_path = Path(proxy.session.policy.source)
    if policy_path is not None and policy_path.is_file():
        env["FAILCORE_POLICY"] = str(policy_path.resolve())
    return channel


async def _spawn(command: Sequence[str], env: dict[str, str], *, json_output: bool) -> Any:
    # With --json, stdout carries failcore's JSON only: the command's stdout goes to stderr.
    stdout = sys.stderr.fileno() if json_output else None
    return await asyncio.create_subprocess_exec(*command, env=env, stdout=stdout)


def first_segment(tape_dir: Path) -> int:
    """The segment a run starting now writes first (the last one, or a later one): a run's summary
    reads from there, not the whole tape."""
    from failcore.tape.reader import list_segments, segment_number

    numbers = [segment_number(p.name) or 0 for p in list_segments(tape_dir)] if tape_dir.is_dir() else []
    return max(numbers, default=0)


def _finish_run(args: argparse.Namespace, proxy: Any, code: int, *, first: int = 0, **extra: Any) -> int:
    from failcore.runs import summarize
    from failcore.tape.reader import iter_events

    # From the segment open when the run started: a run's summary does not read the whole tape. Its
    # lines are checked (tape/badlines.py): a broken one is warned about, and named in the warnings.
    bad = line_checker()
    events = iter_events(
        proxy.tape_dir, run=proxy.run_id, on_bad_line=bad, check_lines=True, start_segment=first
    )
    summaries = summarize(events)
    summary = summaries[0].to_dict() if summaries else {"run": proxy.run_id, "requests": 0}
    summary["exit_code"] = code
    summary["tape"] = str(proxy.tape_dir)
    summary.update(extra)
    if args.replay:
        summary["replay_saved"] = replay_summary(proxy.tape_dir, proxy.run_id)
    summary["warnings"] = run_warnings(summary)
    if len(bad):
        summary["warnings"].append(
            f"{len(bad)} line(s) of this run on the tape are not as failcore wrote them (named above): "
            f"`failcore verify {proxy.tape_dir}` checks the whole tape"
        )
    if args.json:
        print_json(summary)
    else:
        print_run_summary(summary, stream=err_console)
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
            "must be given it" + ("" if contained else "; `failcore run --contain` records every connection")
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
    first = 0
    refused: Any = None
    channel: Any = None
    code: int | None = None
    try:
        if interrupted:
            return 128 + interrupted[0]
        settings = proxy_settings(args, port=0)
        settings.listen_host = netns.host_ip
        tcp_port = contain.free_port(netns.host_ip)
        dns_port = contain.free_port(netns.host_ip, udp_too=True)
        settings.modes = [f"transparent@{netns.host_ip}:{tcp_port}", f"dns@{netns.host_ip}:{dns_port}"]
        # Lazy: failcore connects upstream only for what it lets through (a blocked raw TCP stream
        # or request never even opens a connection to its destination).
        settings.extra.update(failcore_raw_tcp="block", connection_strategy="lazy")
        proxy = EmbeddedProxy(settings)
        first = first_segment(proxy.tape_dir)
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
        channel = await _open_channel(proxy, env, None)
        if not interrupted:
            try:
                child = await _spawn(netns.command(command), env, json_output=args.json)
            except OSError as e:
                return fail(f"cannot start {command[0]}: {e}")
            code = await child.wait()
    except (contain.ContainError, OSError) as e:
        return fail(str(e))
    finally:
        if channel is not None:
            await channel.close()
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
    return _finish_run(args, proxy, code, first=first, contained=True, leftovers=leftovers)
