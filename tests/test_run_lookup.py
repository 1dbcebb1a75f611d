"""Finding a run by id and the last run by byte search gives what a pass over every event gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from failcore.runs import UnknownRun, last_run_id, resolve_run, run_events
from failcore.tape import iter_events
from failcore.tape.reader import GENESIS_PREV, segment_name
from failcore.tape.writer import encode_line


def reference_ids(tape: Path) -> list[str]:
    """run_ids as it was: every run_start event iter_events yields, in order."""
    seen: dict[str, None] = {}
    for ev in iter_events(tape, kinds=("run_start",), on_bad_line=lambda line, why: None):
        if run := ev.get("run"):
            seen.setdefault(run, None)
    return list(seen)


def reference_last(tape: Path) -> str | None:
    last = None
    for ev in iter_events(tape, kinds=("run_start",), on_bad_line=lambda line, why: None):
        last = ev.get("run")
    return last


class Writer:
    def __init__(self, tape: Path) -> None:
        tape.mkdir()
        self.tape, self.prev, self.seq, self.number = tape, GENESIS_PREV, 0, 0
        self.rotate()

    def rotate(self) -> None:
        self.number += 1
        (self.tape / segment_name(self.number)).touch()

    def raw(self, data: bytes) -> None:
        with open(self.tape / segment_name(self.number), "ab") as f:
            f.write(data)

    def event(self, event: dict[str, Any]) -> None:
        self.seq += 1
        line, self.prev = encode_line(self.prev, self.seq, orjson.dumps(event))
        self.raw(line)


def tricky_tape(tmp_path: Path) -> Path:
    w = Writer(tmp_path / "tape")
    w.event({"kind": "run_start", "run": "run-2026-aaa", "ts_start": 1.0})
    nested = {"kind": "run_start", "run": "ghost-nested"}
    w.event({"kind": "network", "run": "run-2026-aaa", "detail": nested})
    w.rotate()
    w.rotate()  # an empty segment
    w.event({"kind": "network", "run": "run-no-start", "detail": {"kind": "run_start"}})
    w.raw(b'{"kind": "run_start", "run": "other-writer-spaces"}\n')
    w.raw(b'{"kind": "run_start","run":"spaced-kind"}\n')
    w.raw(b'{"kind":"run_start","run":"not-json"\n')
    w.event({"kind": "run_start", "run": "run-2026-bbb", "ts_start": 2.0})
    w.rotate()
    w.event({"kind": "run_start", "run": "run-2026-ccc", "ts_start": 3.0})
    w.event({"kind": "network", "run": "run-2026-ccc"})
    w.event({"kind": "network", "run": "run-no-start", "detail": {"kind": "run_start"}})
    w.raw(b'{"kind":"run_start","run":"cut-by-a-crash"')  # no newline
    return w.tape


NAMES = [
    "run-2026-aaa",
    "run-2026-bbb",
    "run-2026-ccc",
    "ghost-nested",
    "other-writer-spaces",
    "spaced-kind",
    "not-json",
    "cut-by-a-crash",
    "run-no-start",
    "aaa",
    "run-2026",
    "bbb",
    "zzz",
]


def reference_resolve(tape: Path, wanted: str) -> str | None:
    ids = reference_ids(tape)
    if wanted in ids:
        return wanted
    matches = [r for r in ids if r.startswith(wanted) or r.endswith(wanted)]
    return matches[0] if len(matches) == 1 else None


@pytest.mark.parametrize("wanted", NAMES)
def test_resolve_run_matches_a_pass_over_every_event(tmp_path: Path, wanted: str) -> None:
    tape = tricky_tape(tmp_path)
    assert reference_ids(tape) == ["run-2026-aaa", "run-2026-bbb", "run-2026-ccc"]
    expected = reference_resolve(tape, wanted)
    if expected is None:
        with pytest.raises(UnknownRun):
            resolve_run(tape, wanted)
    else:
        assert resolve_run(tape, wanted) == expected


def test_last_run_matches_a_pass_over_every_event(tmp_path: Path) -> None:
    tape = tricky_tape(tmp_path)
    assert last_run_id(tape) == reference_last(tape) == "run-2026-ccc"
    w = Writer(tmp_path / "runless")
    w.event({"kind": "run_start", "run": "first"})
    w.event({"kind": "run_start"})  # the last run_start names no run
    assert last_run_id(w.tape) == reference_last(w.tape) is None
    (tmp_path / "empty").mkdir()
    assert last_run_id(tmp_path / "empty") is None


def test_run_events_by_search_match_a_pass_over_every_line(tmp_path: Path) -> None:
    """A run's events found by byte search are exactly those iter_events yields, in the same order:
    nested `run` fields, run ids that are prefixes of others, lines that are not JSON objects, a line
    cut by a crash, an empty segment, and a line holding the run's bytes twice."""
    tape = tricky_tape(tmp_path)
    w = Writer(tmp_path / "more")
    w.event({"kind": "network", "run": "run-a", "seq_hint": 1, "detail": {"run": "run-ab"}})
    w.event({"kind": "network", "run": "run-ab", "seq_hint": 2, "detail": {"run": "run-a"}})
    w.raw(b'["not an object", {"run":"run-a"}]\n')
    w.raw(b'{"run":"run-a","broken":\n')
    w.rotate()
    w.rotate()  # an empty segment between two that hold the run
    w.event({"kind": "websocket", "run": "run-a", "seq_hint": 3, "path": '"run":"run-a"'})
    w.raw(b'{"kind":"network","run":"run-a","cut":true')  # no newline: still being written
    for where in (tape, w.tape):
        for run in [*NAMES, "run-a", "run-ab", "run-", "", '"run"']:
            expected = list(iter_events(where, run=run, on_bad_line=lambda line, why: None))
            assert list(run_events(where, run)) == expected, (where.name, run)
    assert [e["seq_hint"] for e in run_events(w.tape, "run-a")] == [1, 3]
