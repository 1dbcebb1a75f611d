"""`failcore verify`: check a tape's chain, signatures and end; the exit code says what was proved."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from failcore.cli.common import console, err_console, print_json, tape_arg
from failcore.paths import failcore_home
from failcore.textsafe import safe_text

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
                or the signed manifest does not match, lines were removed from its end, or a file named
                like a segment that failcore did not write (seg-0000002.jsonl) was put beside them.
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

    tape = tape_arg(args.tape)
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
        print_json(report.to_dict())
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
    if report.unexpected_files:
        names = ", ".join(repr(n) for n in report.unexpected_files[:5])
        more = len(report.unexpected_files) - 5
        console.print(
            safe_text(
                f"  files failcore did not write are in the tape directory (no command reads them): {names}"
                + (f" and {more} more" if more > 0 else ""),
                "yellow",
            ),
            soft_wrap=True,
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
