"""`failcore list` reads run summaries from the viewer's index cache: always what summarize_tape says."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from failcore.runs import summarize_tape
from failcore.tape.reader import GENESIS_PREV, segment_name
from failcore.tape.writer import encode_line
from failcore.tui import summaries
from failcore.tui.cache import prepare_cache_dir
from failcore.tui.index import build_index
from failcore.tui.summaries import summarize_tape_cached


class Tape:
    """A hash-chained tape written line by line, rotated by hand."""

    def __init__(self, path: Path, seed: int = 7) -> None:
        path.mkdir(parents=True)
        self.path = path
        self.rng = random.Random(seed)
        self.prev = GENESIS_PREV
        self.seq = 0
        self.number = 0
        self.n = 0
        self.rotate()

    @property
    def open_segment(self) -> Path:
        return self.path / segment_name(self.number)

    def rotate(self) -> None:
        self.number += 1
        self.open_segment.touch(mode=0o600)

    def write(self, event: dict[str, Any]) -> None:
        self.seq += 1
        line, self.prev = encode_line(self.prev, self.seq, orjson.dumps(event))
        with open(self.open_segment, "ab") as f:
            f.write(line)

    def run(self, run: str, events: int) -> None:
        detail = {"policy": "p.yaml"}
        self.write({"kind": "run_start", "run": run, "ts_start": 1e9 + self.n, "detail": detail})
        for _ in range(events):
            self.n += 1
            self.write(self.event(run))

    def event(self, run: str) -> dict[str, Any]:
        rng, n = self.rng, self.n
        pick = rng.randrange(10)
        ts = 1e9 + n
        if pick == 0:
            return {"kind": "websocket", "run": run, "ts": ts, "dlp": {"hits": [{"severity": "low"}]}}
        if pick == 1:
            return {"kind": "internal_error", "run": run, "ts": ts}
        if pick == 2:
            return {"kind": "dropped", "run": run, "ts": ts, "count": rng.randrange(1, 5)}
        decision = rng.choice(("ALLOW", "ALLOW", "WARN", "BLOCK"))
        event: dict[str, Any] = {
            "kind": "network",
            "run": run,
            "ts_start": ts,
            "ts_end": ts + 0.5,
            "target": {"host": rng.choice(("a.example", "b.example")), "port": 443},
            "decision": decision,
            "outcome": "BLOCKED" if decision == "BLOCK" else rng.choice(("ok", "ok", "FAIL")),
            "would_block": decision == "WARN",
            "rule": "r1" if decision == "BLOCK" else None,
            "fail_reason": "upstream",
            "bytes_out": rng.randrange(1000),
            "bytes_in": rng.randrange(1000),
            "request": {"body": {"text": "x" * rng.randrange(50)}},
        }
        if pick < 8:
            usd = rng.choice((None, round(rng.random() / 1000, 8)))
            event["llm"] = {"usage": {"input_tokens": n, "output_tokens": 2 * n}, "cost": {"usd": usd}}
        if pick == 9:
            event["dlp"] = {"hits": [{"severity": "high", "action": "BLOCK"}]}
        return event


def expected(tape: Tape) -> list[dict[str, Any]]:
    return [r.to_dict() for r in summarize_tape(tape.path)]


def cached(tape: Tape, cache: Path) -> list[dict[str, Any]]:
    return [r.to_dict() for r in summarize_tape_cached(tape.path, cache)]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FAILCORE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(segment, start offset) of every segment read line by line."""
    seen: list[tuple[str, int]] = []
    original = summaries._count_lines

    def counting(path: Path, start: int) -> Any:
        seen.append((path.name, start))
        return original(path, start)

    monkeypatch.setattr(summaries, "_count_lines", counting)
    return seen


def three_segments(tmp_path: Path) -> Tape:
    tape = Tape(tmp_path / "tape")
    tape.run("run-a", 120)
    tape.rotate()
    tape.run("run-b", 80)  # run-b and run-c span segments
    tape.rotate()
    tape.run("run-c", 60)
    tape.rotate()
    tape.write(tape.event("run-c"))
    tape.run("run-d", 40)
    return tape


def test_cold_and_warm_equal_summarize_tape_and_warm_reads_only_new_lines(
    home: Path, tmp_path: Path, scans: list[tuple[str, int]]
) -> None:
    tape = three_segments(tmp_path)
    cache = prepare_cache_dir(tape.path)
    assert cached(tape, cache) == expected(tape)
    assert [s for s, _ in scans] == [segment_name(n) for n in (1, 2, 3, 4)]
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    entries = sorted(p.name for p in cache.iterdir() if p.name != "source")
    assert entries == [f"{segment_name(n)}.sum" for n in (1, 2, 3)] + [f"{segment_name(4)}.tail"]
    assert all(oct((cache / e).stat().st_mode & 0o777) == "0o600" for e in entries)

    scans.clear()
    assert cached(tape, cache) == expected(tape)
    size = tape.open_segment.stat().st_size
    assert scans == [(segment_name(4), size)], "warm: only what follows the cached tail is read"

    # the tape is being appended to: only the new lines are read, and they count
    tape.run("run-e", 30)
    scans.clear()
    assert cached(tape, cache) == expected(tape)
    assert scans == [(segment_name(4), size)]

    # ...and rotates: the old open segment is sealed and cached like the others
    tape.rotate()
    tape.run("run-f", 10)
    assert cached(tape, cache) == expected(tape)
    assert not (cache / f"{segment_name(4)}.tail").exists()
    assert (cache / f"{segment_name(4)}.sum").exists()


def test_an_edited_or_truncated_segment_invalidates_its_cache(home: Path, tmp_path: Path) -> None:
    tape = three_segments(tmp_path)
    cache = prepare_cache_dir(tape.path)
    before = expected(tape)
    assert cached(tape, cache) == before

    # the open segment: same size, the host changed in its first exchange (the cached prefix)
    data = tape.open_segment.read_bytes()
    first_end = data.index(b"\n", data.index(b'"kind":"network"'))
    edited = data[:first_end].replace(b'"a.example"', b'"c.example"').replace(b'"b.example"', b'"c.example"')
    assert edited != data[:first_end]
    tape.open_segment.write_bytes(edited + data[first_end:])
    assert expected(tape) != before
    assert cached(tape, cache) == expected(tape)

    # the open segment cut short (a crash mid-line), then a sealed segment losing its last line
    tape.open_segment.write_bytes(data[: len(data) // 2])
    assert cached(tape, cache) == expected(tape)
    sealed = tape.path / segment_name(2)
    sealed_data = sealed.read_bytes()
    sealed.write_bytes(sealed_data[: sealed_data.rindex(b"\n", 0, -1) + 1])
    assert cached(tape, cache) == expected(tape)
    # a sealed segment edited in place keeping its size: its mtime changes
    first = tape.path / segment_name(1)
    first_data = first.read_bytes()
    first.write_bytes(first_data.replace(b'"run-a"', b'"run-z"'))
    assert cached(tape, cache) == expected(tape)
    assert "run-z" in {r["run"] for r in cached(tape, cache)}


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"not json\n\x00\x01",
        b'{"version": 2, "segment": "x"}\n',
        orjson.dumps({"version": 2, "stats": [{"run": "run-x", "requests": "many"}]}),
    ],
)
def test_a_corrupt_cache_is_rebuilt_never_trusted(home: Path, tmp_path: Path, garbage: bytes) -> None:
    tape = three_segments(tmp_path)
    cache = prepare_cache_dir(tape.path)
    assert cached(tape, cache) == expected(tape)
    for entry in cache.iterdir():
        if entry.name != "source":
            entry.write_bytes(garbage)
    assert cached(tape, cache) == expected(tape)
    # a tail entry that names the segment but whose digest does not match its bytes
    tail = cache / f"{segment_name(4)}.tail"
    record = orjson.loads(tail.read_bytes())
    record["stats"] = [{"run": "run-x", "requests": 5}]
    record["blake2b"] = "0" * 64
    tail.write_bytes(orjson.dumps(record))
    assert cached(tape, cache) == expected(tape)
    assert cached(tape, cache) == expected(tape)  # and what was rebuilt is served again


def test_list_json_is_summarize_tape_and_writes_nothing_to_stderr(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from failcore.cli.main import main

    tape = three_segments(tmp_path)
    for _ in range(2):  # cold, then warm
        assert main(["list", "--tape", str(tape.path), "--json"]) == 0
        out, err = capsys.readouterr()
        assert orjson.loads(out) == orjson.loads(orjson.dumps(expected(tape)))
        assert err == ""


def test_the_viewers_index_serves_sealed_segments_it_has_indexed(
    home: Path, tmp_path: Path, scans: list[tuple[str, int]]
) -> None:
    tape = three_segments(tmp_path)
    cache = prepare_cache_dir(tape.path)
    build_index(tape.path, cache)
    assert sorted(p.name for p in cache.glob("*.idx")) == [f"{segment_name(n)}.idx" for n in (1, 2, 3)]
    assert cached(tape, cache) == expected(tape)
    assert scans == [(segment_name(4), 0)], "sealed segments came from the viewer's index"


def test_no_cache_dir_still_counts(tmp_path: Path) -> None:
    tape = three_segments(tmp_path)
    assert [r.to_dict() for r in summaries.summarize_tape_cached(tape.path, None)] == expected(tape)
