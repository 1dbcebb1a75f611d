"""The DLP evidence worker's child process (`python -P -m failcore.evidence.scanchild`, started by
failcore.evidence.scanworker.ScanWorker): a config frame naming the policy, then one reply per batch frame
until its stdin closes. A batch item is an event to DLP-scan (failcore.evidence.scanworker.DeferredScan)
or an exchange's snapshot to build the event of, DLP pass included (failcore.evidence.remotebuild).
It reads its stdin, writes its stdout, opens no socket and never sees the tape or the signing key."""

from __future__ import annotations

import signal
import sys
from typing import Any

import orjson

from failcore.evidence.dlp import Echoes, scan_event
from failcore.evidence.findings import PastCapFindings
from failcore.evidence.remotebuild import build_from_frame, is_build_item
from failcore.evidence.scanworker import SERIALISED, UNCHANGED, _scanner_for
from failcore.evidence.workerpipe import read_frame, write_frame, write_reply


def child_main() -> int:
    """The worker: a config frame, then one reply per batch frame, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd = sys.stdin.fileno()
    out = sys.stdout.buffer
    try:
        scanner = _scanner_for(read_frame(fd))
    except EOFError:
        return 0
    except Exception as exc:
        write_frame(out, {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
        return 1
    write_frame(out, {"ok": True})
    while True:
        try:
            batch = read_frame(fd)
        except EOFError:
            return 0
        results: list[dict[str, Any] | int | None] = []
        serialised: list[bytes] = []
        for item in batch:
            try:
                if is_build_item(item):
                    # Sent as the tape line's body: the proxy neither parses it nor serialises it again.
                    serialised.append(orjson.dumps(build_from_frame(item, scanner)))
                    results.append(SERIALISED)
                    continue
                event, past_cap, echoes = _frame_item(item)
                before = orjson.dumps(event)
                scan_event(scanner, event, past_cap, echoes)
                # Most events hold no secret: "unchanged" spares the proxy decoding them again.
                results.append(UNCHANGED if orjson.dumps(event) == before else event)
            except Exception:
                results.append(None)  # the proxy scans this one itself
        write_reply(out, results, serialised)


def _frame_item(item: Any) -> tuple[dict[str, Any], tuple[PastCapFindings, ...], Echoes]:
    if isinstance(item, dict):
        return item, (), None
    if isinstance(item, list) and len(item) in (2, 4) and isinstance(item[0], dict) and type(item[1]) is list:
        past_cap = tuple(PastCapFindings.from_wire(findings) for findings in item[1])
        if len(item) == 2:
            return item[0], past_cap, None
        return item[0], past_cap, ([bytes.fromhex(secret) for secret in item[2]], bytes.fromhex(item[3]))
    raise ValueError("malformed batch item")


if __name__ == "__main__":
    sys.exit(child_main())
