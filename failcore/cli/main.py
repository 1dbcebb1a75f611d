"""The `failcore` argument parser, and dispatch to one module per command (failcore/cli/COMMAND.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from failcore import __version__
from failcore.cli.addon_path import cmd_addon_path
from failcore.cli.ca import cmd_ca
from failcore.cli.common import err_console
from failcore.cli.diff import cmd_diff
from failcore.cli.listing import cmd_list
from failcore.cli.policy import cmd_policy_check, cmd_policy_list
from failcore.cli.proxy import serve
from failcore.cli.report import cmd_report
from failcore.cli.run import run_command
from failcore.cli.sample import cmd_sample
from failcore.cli.show import cmd_show
from failcore.cli.tail import cmd_tail
from failcore.cli.verify import VERIFY_EPILOG, cmd_verify
from failcore.cli.view import cmd_view
from failcore.paths import default_tape_dir, failcore_home

# The commands that run mitmproxy in this process.
PROXY_COMMANDS = ("proxy", "run")

# `failcore --help` opens with this.
DESCRIPTION = (
    "The `failcore` command: proxy, run, ca, list, show, tail, verify, report, diff, view, policy check,\n"
    "sample."
)


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
    parser = argparse.ArgumentParser(prog="failcore", description=DESCRIPTION)
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
        metavar="SEQ|FLOW|CALL",
        help="show one event in full, by its seq, flow id or tool call id (any run of the tape when no "
        "run is given)",
    )
    p.add_argument(
        "--kind",
        action="append",
        metavar="KIND",
        help="only events of this kind: network, tool, fs, exec, connect, policy… (repeatable or a,b)",
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
        default=1000,
        help="most rows in any list of the report: timeline, waterfall, blocked, DLP hits, LLM calls… "
        "(default 1000; counts always cover the whole run and the page says what was left out)",
    )
    p.add_argument(
        "--bodies",
        action="store_true",
        help="include request/response bodies as recorded (DLP-masked) and LLM conversations; "
        "the file is then written 0600",
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "diff",
        help="where run B first departs from run A (exit 0 same shape, 1 diverged or a broken line read)",
    )
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
        help='print the path of failcore\'s mitmproxy addon script: mitmdump -s "$(failcore addon-path)"',
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
    "report": ("failcore report --last -o report.html", "failcore report run-2026 --max-events 5000"),
    "diff": ("failcore diff run-a run-b", "failcore diff run-a run-b --ignore /metadata/user_id --json"),
    "view": ("failcore view", "failcore view -f /var/lib/failcore/tape"),
    "sample": ("failcore sample", "failcore sample --json --tape /tmp/sample"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
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
    if args.cmd in PROXY_COMMANDS:
        try:
            return asyncio.run(serve(args) if args.cmd == "proxy" else run_command(args))
        except KeyboardInterrupt:  # Ctrl-C before the command's own handlers are in place (start-up)
            err_console.print(f"failcore {args.cmd}: interrupted")
            return 130
    if args.cmd == "policy":
        return cmd_policy_list(args) if args.policy_cmd == "list" else cmd_policy_check(args)
    return handlers[args.cmd](args)


def entry() -> NoReturn:
    """The `failcore` console script: `main`, then exit with its status. Once the command has finished,
    a late Ctrl-C (while the interpreter shuts down) is ignored: it must not turn the command's own
    exit status into a death by SIGINT.

    A command that ran mitmproxy ends the process without finalising the interpreter. mitmproxy_rs
    keeps its tokio worker threads until the process ends, and one that touches a Python object while
    the interpreter finalises dies in a forced unwind: a segfault (mitmproxy/mitmproxy#7409), seen here
    as `failcore run --contain` exiting -11 after printing its summary. When `dispatch` returns, the
    proxy has stopped, the tape is closed and the summary written: only stdout and stderr remain to
    be flushed."""
    args = build_parser().parse_args()
    if args.cmd not in PROXY_COMMANDS:
        code = dispatch(args)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.exit(code)
    try:
        code = dispatch(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # a crash: said as Python would, then the same exit without finalising
        traceback.print_exc()
        code = 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_without_finalising(code)


def exit_without_finalising(code: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can reach it
            stream.flush()
    os._exit(code)
