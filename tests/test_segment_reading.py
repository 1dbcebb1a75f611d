"""Readers of the segment being written survive the writer truncating it.

The tape writer undoes a partial write (a full disk) by truncating its open segment back to the last
committed line (tape/writer.py `_undo_partial_write`). A reader that had that segment mapped with mmap
and touched a page past the new end was killed by SIGBUS. Each case runs the reader in a child process
that truncates the open segment, as the writer would, in the middle of its reading: the child must end
normally."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from failcore.tape.keys import load_or_create_signing_key
from failcore.tape.reader import list_segments
from failcore.tape.writer import TapeWriter
from tests.report_helpers import lifecycle, network

REPO = Path(__file__).resolve().parent.parent
RUN = "run-truncated"

# The child: reads the tape with one reader and truncates the open segment to its first line the
# first time that reader parses an event (so the reader is in the middle of the segment).
CHILD = r"""
import os, sys
from pathlib import Path
import orjson

tape, reader = Path(sys.argv[1]), sys.argv[2]
segment = sorted(tape.glob("seg-*.jsonl"))[-1]
first_line = len(segment.read_bytes().split(b"\n", 1)[0]) + 1
real_loads = orjson.loads
done = []

class Shim:
    dumps = staticmethod(orjson.dumps)
    JSONDecodeError = orjson.JSONDecodeError
    OPT_INDENT_2 = orjson.OPT_INDENT_2

    @staticmethod
    def loads(data):
        event = real_loads(data)
        if not done and isinstance(event, dict) and event.get("kind") == "network":
            done.append(True)
            os.truncate(segment, first_line)  # what the writer's _undo_partial_write does
        return event

if reader == "report":
    import failcore.report.aggregates as module
    from failcore.report import ReportError, collect_report
    module.orjson = Shim
    try:
        report = collect_report(tape, "run-truncated", max_events=5)
        print("events", report.events_read)
    except ReportError as e:
        print("no run", e)
elif reader == "run_events":
    import failcore.runs as module
    module.orjson = Shim
    print("events", sum(1 for _ in module.run_events(tape, "run-truncated")))
print("truncated" if done else "not truncated")
"""


def one_segment_tape(tmp_path: Path) -> Path:
    tape = tmp_path / "tape"
    confdir = tmp_path / "conf"
    confdir.mkdir()
    events = [lifecycle("run_start", RUN, 1_700_000_000.0, policy="p.yaml", mode="observe")]
    events += [network(n, RUN, summary="x" * 400) for n in range(300)]
    with TapeWriter(
        tape,
        signing_key=load_or_create_signing_key(confdir),
        run_id="writer",
        checkpoint_every=50,
        segment_bytes=64 * 2**20,
    ) as writer:
        for ev in events:
            assert writer.submit(ev)
    return tape


@pytest.mark.parametrize("reader", ["report", "run_events"])
def test_open_segment_truncated_while_read_does_not_crash(tmp_path: Path, reader: str) -> None:
    tape = one_segment_tape(tmp_path)
    segments = list_segments(tape)
    assert len(segments) == 1 and segments[0].stat().st_size > 16 * 4096
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tape), reader],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode != -signal.SIGBUS, "the reader was killed by SIGBUS"
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout.decode().splitlines()[-1] == "truncated"  # the truncation happened mid-read
    assert segments[0].stat().st_size < 4096
