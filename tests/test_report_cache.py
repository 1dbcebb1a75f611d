"""`failcore report` from the cached per-segment aggregates: the same page as counting every line.

Tapes here are written by the real TapeWriter with a small rotation size, so runs interleave across
segments and span rotations; the reference page is `collect_report(..., index=False)`, which reads and
counts every event of the run (what `report` did before the cache). Expected counts are derived from
the events the tests write, not from the code under test.
"""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest

from failcore.report import aggregates, collect_report, countworker, render_report
from failcore.report.aggregates import ENTRY_MARK, OFFSET_CAP
from failcore.tape.reader import list_segments, segment_name, segment_number
from failcore.tape.writer import encode_line
from failcore.tui.cache import default_cache_dir
from tests.report_helpers import (
    RUNS,
    SECRET,
    cassette_event,
    count_in_workers,
    counted_in_workers,
    interleaved,
    lifecycle,
    load_cassettes,
    varied_event,
    write_tape,
)


def page(report: Any) -> str:
    report.generated = 0.0
    return render_report(report)


def assert_same(
    tape: Path, run: str, *, max_events: int, bodies: bool = False, cached: bool | None = None
) -> None:
    """The page from the index (and its cache) equals the page that counts every event."""
    reference = collect_report(tape, run, max_events=max_events, bodies=bodies, index=False)
    fast = collect_report(tape, run, max_events=max_events, bodies=bodies)
    if cached is not None:
        assert bool(fast.cached_segments) is cached
    assert fast.cached_segments == 0 or fast.verification.ok
    assert fast.summary.to_dict() == reference.summary.to_dict()
    assert fast.events_read == reference.events_read
    assert list(fast.omitted.items()) == list(reference.omitted.items())
    assert fast.verification.status == reference.verification.status
    assert page(fast) == page(reference)


def entries(tape: Path) -> list[Path]:
    return sorted(default_cache_dir(tape).glob(f"*{ENTRY_MARK}*"))


def run_segments(tape: Path, run: str) -> int:
    needle = b'"run":' + orjson.dumps(run)
    return sum(needle in p.read_bytes() for p in list_segments(tape))


@pytest.mark.parametrize("seed", [1, 2])
def test_cached_page_equals_page_from_every_line(tmp_path: Path, confdir: Path, seed: int) -> None:
    tape = tmp_path / "tape"
    write_tape(tape, confdir, interleaved(seed, 700))
    assert len(list_segments(tape)) >= 8
    assert all(run_segments(tape, run) >= 3 for run in RUNS)  # interleaved, spanning rotations
    for max_events in (1, 4, 9, 60, 1000):
        for run in RUNS:
            assert_same(tape, run, max_events=max_events)  # cold for the first bound, then warm
            assert_same(tape, run, max_events=max_events, cached=True)
    assert_same(tape, RUNS[0], max_events=5, bodies=True, cached=True)
    # Past what the cache keeps offsets for, every event is read: the same page again.
    assert_same(tape, RUNS[0], max_events=OFFSET_CAP, cached=False)


def test_bounds_bite_in_every_section(tmp_path: Path, confdir: Path) -> None:
    """Counts derived from the events written, not from the code: every list is bounded, the host
    table keeps the first hosts, the left-out counts come in the order the lists filled up."""
    tape = tmp_path / "tape"
    events = interleaved(3, 600)
    write_tape(tape, confdir, events)
    run = RUNS[0]
    mine = [e for e in events if e["run"] == run]
    exchanges = [e for e in mine if e["kind"] == "network"]
    hosts_seen: list[str] = []
    for e in exchanges:
        key = f"{e['target']['host']}:{e['target']['port']}"
        if key not in hosts_seen:
            hosts_seen.append(key)
    bound = 3
    collect_report(tape, run, max_events=bound)  # fills the cache
    report = collect_report(tape, run, max_events=bound)
    assert report.cached_segments >= 3
    assert report.events_read == len(mine)
    assert report.omitted["timeline"] == len(mine) - bound
    assert report.omitted["llm"] == sum("llm" in e for e in exchanges) - bound
    assert report.omitted["dlp"] == sum(len(e.get("dlp", {}).get("hits", [])) for e in mine) - bound
    assert report.omitted["hosts"] == sum(
        f"{e['target']['host']}:{e['target']['port']}" not in hosts_seen[:bound] for e in exchanges
    )
    assert sorted(report.hosts) == sorted(hosts_seen[:bound])
    assert [e.get("flow") for e in report.timeline] == [e.get("flow") for e in mine[:bound]]
    assert next(iter(report.omitted)) == "timeline"  # the first list to overflow
    mean = [
        e["latency_ms"] for e in exchanges if f"{e['target']['host']}:{e['target']['port']}" == hosts_seen[0]
    ]
    assert round(report.hosts[hosts_seen[0]].mean_latency_ms, 6) == round(sum(mean) / len(mean), 6)


def append(tape: Path, events: list[dict[str, Any]]) -> None:
    """Append events to the segment being written, continuing the chain (as a running writer does).
    The closed writer's signed manifest records where that segment ended, so it goes: a live writer's
    manifest has not closed the segment, and verification must still find the chain intact."""
    (tape / "manifest.json").unlink(missing_ok=True)
    segment = list_segments(tape)[-1]
    last = orjson.loads(segment.read_bytes().splitlines()[-1])
    prev, seq = str(last["h"]).encode("ascii"), last["seq"]
    with open(segment, "ab") as f:
        for ev in events:
            seq += 1
            line, prev = encode_line(prev, seq, orjson.dumps(ev))
            f.write(line)


def test_appended_open_segment_reads_only_its_tail(tmp_path: Path, confdir: Path) -> None:
    tape = tmp_path / "tape"
    write_tape(tape, confdir, interleaved(4, 400))
    for run in RUNS:
        assert_same(tape, run, max_events=7)
    open_entry = [e for e in entries(tape) if e.name.startswith(list_segments(tape)[-1].name)]
    assert open_entry and all(b'"blake2b"' in e.read_bytes() for e in open_entry)
    rng = random.Random(5)
    append(tape, [varied_event(rng, rng.choice(RUNS), 10_000 + n) for n in range(60)])
    for run in RUNS:
        assert_same(tape, run, max_events=7, cached=True)
        assert_same(tape, run, max_events=1000, cached=True)
    # A line still being written is not counted (nor is it by the reference), then it is.
    segment = list_segments(tape)[-1]
    whole = segment.read_bytes()
    append(tape, [varied_event(rng, RUNS[0], 20_000)])
    cut = segment.read_bytes()
    segment.write_bytes(cut[: len(whole) + (len(cut) - len(whole)) // 2])
    assert_same(tape, RUNS[0], max_events=7)
    segment.write_bytes(cut)
    assert_same(tape, RUNS[0], max_events=7, cached=True)


def rotate(tape: Path, tail: list[dict[str, Any]], fresh: list[dict[str, Any]]) -> None:
    """What a running writer's rotation does: a few more lines in the open segment (the writer ends it
    with a checkpoint), then the chain goes on in a new segment."""
    append(tape, tail)
    segment = list_segments(tape)[-1]
    last = orjson.loads(segment.read_bytes().splitlines()[-1])
    prev, seq = str(last["h"]).encode("ascii"), last["seq"]
    with open(tape / segment_name(segment_number(segment.name) + 1), "xb") as f:
        for ev in fresh:
            seq += 1
            line, prev = encode_line(prev, seq, orjson.dumps(ev))
            f.write(line)


def test_first_report_after_rotation_counts_only_new_lines(
    tmp_path: Path, confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The segment that was open when the cache was filled and is sealed now keeps its counted prefix:
    the first report after the rotation parses only the lines written since, and its page is the page
    of every line."""
    tape = tmp_path / "tape"
    write_tape(tape, confdir, interleaved(11, 400))
    run = RUNS[0]
    collect_report(tape, run, max_events=7)  # cold: every segment counted, the open one's prefix kept
    rng = random.Random(12)
    tail = [varied_event(rng, run, 30_000 + n) for n in range(5)]
    fresh = [varied_event(rng, run, 40_000 + n) for n in range(6)]
    rotate(tape, tail, fresh)
    counted: list[int] = []
    real = aggregates.count_part

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        part = result[0] if isinstance(result, tuple) else result
        counted.append(part.events)
        return result

    monkeypatch.setattr(aggregates, "count_part", spy)
    report = collect_report(tape, run, max_events=7)
    assert report.verification.ok
    assert sum(counted) == len(tail) + len(fresh)  # not the sealed segment's whole part again
    monkeypatch.undo()
    assert_same(tape, run, max_events=7, cached=True)
    assert_same(tape, run, max_events=1000, cached=True)


def cold_report(tape: Path, run: str, home: Path, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> Any:
    """A report with no view index yet (a fresh FAILCORE_HOME)."""
    monkeypatch.setenv("FAILCORE_HOME", str(home))
    return collect_report(tape, run, **kw)


@pytest.mark.parametrize("cores", [1, 2, 4])
def test_cold_page_equals_warm_page_and_every_line(
    tmp_path: Path, confdir: Path, monkeypatch: pytest.MonkeyPatch, cores: int
) -> None:
    """Cold (every segment counted, by worker processes when there are cores for them), warm (from
    the cache) and the page of every line are the same page."""
    count_in_workers(monkeypatch, cores)
    spawned: list[int] = []
    real_spawn = countworker._spawn

    def spawn() -> Any:
        spawned.append(1)
        return real_spawn()

    monkeypatch.setattr(countworker, "_spawn", spawn)
    tape = tmp_path / "tape"
    write_tape(tape, confdir, interleaved(13, 500))
    for n, run in enumerate(RUNS):
        for max_events in (3, 1000):
            home = tmp_path / f"home-{n}-{max_events}"
            cold = cold_report(tape, run, home, monkeypatch, max_events=max_events)
            assert cold.cached_segments == 0 and cold.verification.ok
            warm = collect_report(tape, run, max_events=max_events)
            assert warm.cached_segments >= 2
            reference = collect_report(tape, run, max_events=max_events, index=False)
            assert cold.summary.to_dict() == warm.summary.to_dict() == reference.summary.to_dict()
            assert list(cold.omitted.items()) == list(reference.omitted.items())
            assert page(cold) == page(warm) == page(reference)
    assert bool(spawned) is (cores > 1)


def test_cold_report_with_workers_flags_an_edited_tape(
    tmp_path: Path, confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting in workers changes nothing about verification: a sealed segment edited in place is
    named as broken, and the counts are those of the bytes as they are (the page of every line)."""
    tape = counted_in_workers(tmp_path, confdir, monkeypatch, 15, 400)
    run = RUNS[0]
    segment = list_segments(tape)[2]
    raw = segment.read_bytes()
    edited = raw.replace(b'"decision":"ALLOW",', b'"decision":"WARN" ,', 1)
    assert edited != raw
    segment.write_bytes(edited)
    cold = cold_report(tape, run, tmp_path / "home", monkeypatch, max_events=5)
    reference = collect_report(tape, run, max_events=5, index=False)
    assert not cold.verification.ok and cold.verification.status == "broken"
    assert cold.verification.first_break is not None
    assert cold.verification.first_break.segment == segment.name
    assert cold.verification.first_break.kind == "edited"
    assert cold.verification.to_dict() | {"seconds": 0, "lines_per_second": 0} == (
        reference.verification.to_dict() | {"seconds": 0, "lines_per_second": 0}
    )
    assert page(cold) == page(reference)


def test_failed_count_worker_is_counted_here(
    tmp_path: Path, confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that answers nonsense or dies: its segments are counted in the report's process."""
    tape = counted_in_workers(tmp_path, confdir, monkeypatch, 14, 300)
    run = RUNS[0]
    reference = collect_report(tape, run, max_events=5, index=False)
    real_read = countworker._read_answer
    calls: list[bytes | None] = []

    def read(stream: Any) -> bytes | None:
        real = real_read(stream)
        calls.append(real)
        if len(calls) == 1:
            return b'{"part": {"events": 1}}'  # not a part: that segment is counted here
        return None if len(calls) == 2 else real  # a worker gone: its other tasks are counted here

    monkeypatch.setattr(countworker, "_read_answer", read)
    cold = cold_report(tape, run, tmp_path / "home", monkeypatch, max_events=5)
    assert len(calls) >= 2
    assert page(cold) == page(reference)
    assert cold.summary.to_dict() == reference.summary.to_dict()


def corrupt_variants(entry: Path) -> list[tuple[str, bytes]]:
    raw = entry.read_bytes()
    record = orjson.loads(raw)
    variants = [("truncated", raw[: len(raw) // 2]), ("not json", b"\x00garbage"), ("empty", b"")]
    variants.append(("a list", b"[1,2,3]"))
    if record.get("part"):
        wrong_type = orjson.loads(raw)
        wrong_type["part"]["summary"]["requests"] = "9"
        variants.append(("a string count", orjson.dumps(wrong_type)))
        shifted = orjson.loads(raw)
        shifted["part"]["offsets"]["timeline"] = [o + 1 for o in shifted["part"]["offsets"]["timeline"]]
        variants.append(("offsets off the lines", orjson.dumps(shifted)))
        short = orjson.loads(raw)
        short["part"]["counts"]["blocked"] += 5
        variants.append(("counts that disagree with the offsets", orjson.dumps(short)))
        hosts = orjson.loads(raw)
        hosts["part"]["hosts"] = [["h", 0, 1, 0, 0, 0, 0, 0, 0, "f" * 5000, "0.0"]]
        variants.append(("a huge number", orjson.dumps(hosts)))
        other_run = orjson.loads(raw)
        other_run["run"] = "someone-else"
        variants.append(("another run's entry", orjson.dumps(other_run)))
    return variants


def test_bad_cache_entries_are_ignored_and_rebuilt(tmp_path: Path, confdir: Path) -> None:
    tape = tmp_path / "tape"
    write_tape(tape, confdir, interleaved(6, 300))
    run = RUNS[0]
    assert_same(tape, run, max_events=4)
    for entry in entries(tape):
        good = entry.read_bytes()
        for what, raw in corrupt_variants(entry):
            entry.write_bytes(raw)
            os.chmod(entry, 0o600)
            try:
                assert_same(tape, run, max_events=4)
            except AssertionError as e:  # pragma: no cover - names the variant
                raise AssertionError(f"{entry.name}: {what}") from e
            assert entry.read_bytes() == good or what == "another run's entry", what  # rebuilt
            entry.write_bytes(good)


def test_entries_written_by_someone_else_are_not_read(tmp_path: Path, confdir: Path) -> None:
    """An entry that others can write, or a symlink, is not trusted even when it holds the right key:
    here each is a forged entry with the run's counts doubled."""
    tape = tmp_path / "tape"
    write_tape(tape, confdir, interleaved(7, 300))
    run = RUNS[1]
    assert_same(tape, run, max_events=4)
    forged_dir = tmp_path / "forged"
    forged_dir.mkdir()
    for entry in entries(tape):
        record = orjson.loads(entry.read_bytes())
        if not record.get("part"):
            continue
        record["part"]["summary"]["requests"] *= 2
        forged = orjson.dumps(record)
        entry.write_bytes(forged)
        os.chmod(entry, 0o644)
        assert_same(tape, run, max_events=4)
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600  # rebuilt by us
        target = forged_dir / entry.name
        target.write_bytes(forged)
        os.chmod(target, 0o600)
        entry.unlink()
        entry.symlink_to(target)
        assert_same(tape, run, max_events=4)
        assert not entry.is_symlink()


def test_tape_edited_in_place_is_counted_again(tmp_path: Path, confdir: Path) -> None:
    """A sealed segment edited without changing its size or mtime keeps its cache key; the chain then
    breaks, and a broken chain means nothing cached is used: the page counts the bytes as they are."""
    tape = tmp_path / "tape"
    write_tape(tape, confdir, interleaved(8, 400))
    run = RUNS[0]
    before = collect_report(tape, run, max_events=4)
    collect_report(tape, run, max_events=4)
    segment = list_segments(tape)[1]
    raw = segment.read_bytes()
    needle = b'"run":"run-alpha"'
    lines = raw.split(b"\n")
    edited = [
        line.replace(b'"decision":"ALLOW",', b'"decision":"WARN" ,') if needle in line else line
        for line in lines
    ]
    assert edited != lines
    st = segment.stat()
    segment.write_bytes(b"\n".join(edited))
    os.utime(segment, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert segment.stat().st_size == st.st_size
    after = collect_report(tape, run, max_events=4)
    assert not after.verification.ok and after.cached_segments == 0
    assert after.summary.warned > before.summary.warned
    assert_same(tape, run, max_events=4)


def test_cache_files_are_private_json_without_secrets(tmp_path: Path, confdir: Path) -> None:
    tape = tmp_path / "tape"
    events = interleaved(9, 300)
    write_tape(tape, confdir, events)
    for run in RUNS:
        collect_report(tape, run, max_events=4, bodies=True)
    found = entries(tape)
    assert len(found) == len(list_segments(tape)) * len(RUNS)
    assert stat.S_IMODE(default_cache_dir(tape).stat().st_mode) == 0o700
    for entry in found:
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600
        raw = entry.read_bytes()
        orjson.loads(raw)  # JSON, nothing executable
        assert SECRET.encode() not in raw  # the request bodies hold it on the tape
        assert b"reply " not in raw and b"warning " not in raw  # no body, no message text
    assert any(SECRET.encode() in p.read_bytes() for p in list_segments(tape))


def test_real_recorded_traffic(tmp_path: Path, confdir: Path) -> None:
    """The recorded provider exchanges of tests/data/openllmetry, over rotated segments, with bodies."""
    tape = tmp_path / "tape"
    cassettes = load_cassettes()
    run = "run-cassettes"
    events = [lifecycle("run_start", run, 1_699_999_999.0, policy="p.yaml", mode="observe")]
    for round_ in range(3):
        for i, (exchange, api, _) in enumerate(cassettes):
            ev = cassette_event(round_ * 100 + i + 1, run, exchange, api)
            events.append(ev)
            events.append(ev | {"run": "run-other", "flow": f"other-{round_}-{i}"})
    write_tape(tape, confdir, events, segment_bytes=30_000)
    assert run_segments(tape, run) >= 3
    for bound in (2, 5, 1000):
        for bodies in (False, True):
            assert_same(tape, run, max_events=bound, bodies=bodies)
            assert_same(tape, run, max_events=bound, bodies=bodies, cached=True)
    report = collect_report(tape, run, bodies=True)
    assert len(report.conversations) == 3 * len(cassettes)
