"""The views of the runtime's events (tool, fs, exec, connect) beside network ones: `list` counts,
`show`, `view`, `report` and `diff` (the first divergent tool call), on tapes written through the real
TapeWriter; recorded tool arguments, paths and argv are hostile and shown inert everywhere."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from failcore.diff import diff_runs, first_difference
from failcore.report import collect_report, render_report
from failcore.runs import RunSummary, summarize_tape
from failcore.tape.reader import list_segments
from failcore.tui.app import EventScreen, EventsScreen, RunsScreen, ViewerApp
from failcore.tui.filters import EventFilter, filter_positions
from failcore.tui.index import build_index
from failcore.tui.summaries import summarize_tape_cached
from failcore.views.tables import runs_table
from tests.runtime_tapes import HOSTILE_ARG, HOSTILE_ARGV, HOSTILE_PATH, T0, mixed_run, tool, write_events
from tests.tui_helpers import screen_text

RUN = "run-mixed-0001"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tape(tmp_path: Path) -> Path:
    directory = tmp_path / "tape"
    write_events(directory, tmp_path / "keys", mixed_run(RUN))
    return directory


def read(tape: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for path in list_segments(tape) for line in path.read_bytes().splitlines()]


def failcore(home: Path, *args: str, columns: int = 300) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "FAILCORE_HOME": str(home),
        "PYTHONPATH": str(REPO),
        "COLUMNS": str(columns),
    }
    return subprocess.run(
        [sys.executable, "-m", "failcore.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )


# What mixed_run holds, counted by hand from its definition (not by the code under test).
EXPECTED = {
    "requests": 1,
    "tool_calls": 6,
    "tool_blocked": 1,
    "tool_failed": 1,
    "tool_warned": 0,
    "contract_drifts": 1,
    "effects_fs": 3,
    "effects_exec": 2,
    "effects_connect": 1,
    "effects_blocked": 2,
    "tools": {"write_file": 2, "git_status": 1, "fetch_url": 1, "summarize": 1, "note": 1},
    "runtime_block_rules": {"fs.write_outside_roots": 2, "net.metadata": 1},
    "blocked": 0,  # network exchanges only, as before
}


def test_run_summary_counts_tool_calls_blocked_calls_and_effects(tape: Path) -> None:
    (summary,) = [s for s in summarize_tape(tape) if s.run == RUN]
    assert {k: getattr(summary, k) for k in EXPECTED} == EXPECTED
    assert summary.effects == 6


def test_list_cache_counts_the_new_kinds_like_a_full_pass_and_ignores_old_caches(tmp_path: Path) -> None:
    tape = tmp_path / "tape"
    # Small segments: several sealed ones (cached as `.sum`) and an open one (cached as `.tail`).
    write_events(tape, tmp_path / "keys", mixed_run(RUN) + mixed_run("run-two", T0 + 100), segment_bytes=3000)
    assert len(list_segments(tape)) > 3
    cache = tmp_path / "cache"
    truth = [s.to_dict() for s in summarize_tape(tape)]
    cold = [s.to_dict() for s in summarize_tape_cached(tape, cache)]
    warm = [s.to_dict() for s in summarize_tape_cached(tape, cache)]
    assert cold == truth and warm == truth
    assert [(s["run"], s["tool_calls"]) for s in truth if s["run"] != "writer"] == [(RUN, 6), ("run-two", 6)]
    # A cache entry written before the runtime kinds were counted (format 2, no tool fields) would load
    # as zero tool calls: it must be ignored, not trusted.
    for entry in cache.glob("*.sum"):
        record = orjson.loads(entry.read_bytes())
        record["version"] = 2
        record["stats"] = [
            {k: v for k, v in s.items() if not k.startswith(("tool", "effects", "contract", "runtime"))}
            for s in record["stats"]
        ]
        entry.write_bytes(orjson.dumps(record))
    assert [s.to_dict() for s in summarize_tape_cached(tape, cache)] == truth


def test_index_rows_labels_and_kind_filter(tape: Path, tmp_path: Path) -> None:
    index = build_index(tape, tmp_path / "cache")
    rows = [index.row(p) for p in index.run_rows[RUN]]
    assert [r.kind for r in rows] == [ev["kind"] for ev in mixed_run(RUN)]  # tape order, every event
    labels = {r.kind: r.path for r in rows}
    assert labels["connect"] == "[connect] 169.254.169.254:80"
    tools = list(filter_positions(index.run_rows[RUN], EventFilter(kind="tool"), index.row, index.raw_line))
    assert [index.row(p).path.split("(")[0] for p in tools] == [
        "[tool] write_file", "[tool] write_file", "[tool] git_status", "[tool] fetch_url", "[tool] summarize",
        "[tool] note",
    ]  # fmt: skip
    blocked = [r for r in rows if r.outcome == "BLOCKED"]
    assert [(r.kind, r.decision) for r in blocked] == [
        ("fs", "BLOCK"),
        ("tool", "BLOCK"),
        ("connect", "BLOCK"),
    ]
    assert index.runs[RUN].tool_calls == 6 and index.runs[RUN].effects_blocked == 2
    # The sealed-segment cache holds the new kinds' codes: a second build from it reads the same rows.
    again = build_index(tape, tmp_path / "cache")
    assert [again.row(p) for p in again.run_rows[RUN]] == rows


def test_show_lists_tool_fs_exec_connect_events_in_tape_order(tape: Path, tmp_path: Path) -> None:
    done = failcore(tmp_path / "home", "show", RUN, "--tape", str(tape))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    order = [
        "POST /v1/chat/completions",
        "[fs] write /tmp/sandbox/out.txt",
        '[tool] write_file(path="/tmp/sandbox/out.txt", content="hello") effects: fs 1',
        "[fs] write /etc/passwd",
        '[tool] write_file(path="../../etc/passwd", content="hack") effects: fs 1 blocked 1',
        '[exec] git ["git","status","--short"]',
        "[connect] 169.254.169.254:80",
        '[tool] summarize(text="quarterly numbers") contract drift: expected json, got text',
    ]
    positions = [out.find(text) for text in order]
    assert -1 not in positions, out
    assert positions == sorted(positions)
    line = next(x for x in out.splitlines() if "../../etc/passwd" in x)
    assert "BLOCK" in line and "BLOCKED" in line and "fs.write_outside_roots" in line
    fetch = next(x for x in out.splitlines() if "[tool] fetch_url" in x)
    assert "tool_error" in fetch
    assert "tool calls: 6 (1 blocked, 1 failed, 1 contract drift;" in out
    assert "effects: fs 3, exec 2, connect 1 (2 blocked)" in out


def test_show_kind_filter(tape: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    only_tools = failcore(home, "show", RUN, "--tape", str(tape), "--kind", "tool").stdout
    assert only_tools.count("[tool]") == 6
    assert "[fs]" not in only_tools and "POST" not in only_tools
    effects = failcore(
        home, "show", RUN, "--tape", str(tape), "--kind", "fs,exec", "--kind", "connect"
    ).stdout
    assert "[tool]" not in effects and effects.count("[fs]") == 3 and effects.count("[exec]") == 2
    listed = orjson.loads(
        failcore(home, "show", RUN, "--tape", str(tape), "--kind", "connect", "--json").stdout
    )
    assert [(e["kind"], e["target"]["host"]) for e in listed] == [("connect", "169.254.169.254")]
    # A tool call by its id (a unique prefix): its tool event; a prefix six calls share names none.
    assert failcore(home, "show", "--event", "a00000000000000", "--tape", str(tape)).returncode == 2
    named = failcore(home, "show", "--event", "a000000000000005", "--tape", str(tape), "--json")
    one = orjson.loads(named.stdout)
    assert (one["kind"], one["tool"]["name"]) == ("tool", "summarize")


def test_hostile_tool_arg_path_and_argv_are_escaped_in_the_terminal(tape: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    table = failcore(home, "show", RUN, "--tape", str(tape)).stdout
    seq = next(e["seq"] for e in read(tape) if e.get("kind") == "tool" and e["action"] == "note")
    one = failcore(home, "show", RUN, "--tape", str(tape), "--event", str(seq)).stdout
    listing = failcore(home, "list", "--tape", str(tape)).stdout
    for out in (table, one, listing):
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    # Arguments and argv read as JSON (orjson writes controls as \u escapes); a path as text with escapes.
    assert 'note(title="\\u001b[31mred\\u001b[0m \\u001b]8;;https://evil.test\\u0007link' in table
    assert "[fs] write /tmp/sandbox/\\x1b]0;pwned\\x07<script>alert(2)</script>\\u202etxt.exe" in table
    assert '[exec] sh ["sh","-c","echo \\u001b[2J<script>alert(3)</script>"]' in table
    assert "\\u001b[31mred" in one  # the event in full is JSON: orjson escapes controls itself


def test_list_counts_tool_calls_blocked_calls_and_effects(tape: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (row,) = [
        r
        for r in orjson.loads(failcore(home, "list", "--tape", str(tape), "--json").stdout)
        if r["run"] == RUN
    ]
    assert {k: row[k] for k in EXPECTED} == EXPECTED
    lines = failcore(home, "list", "--tape", str(tape)).stdout.splitlines()
    header = next(x for x in lines if "requests" in x)
    assert "tools" in header and "effects" in header
    assert "6/1" in next(x for x in lines if RUN in x) and "6/2" in next(x for x in lines if RUN in x)


def test_runs_without_tool_calls_list_as_before() -> None:
    from rich.console import Console

    console = Console(width=300, record=True)
    console.print(runs_table("runs", [RunSummary(run="r", requests=2)], 300))
    assert "tools" not in console.export_text() and "effects" not in console.export_text()


@pytest.mark.asyncio
async def test_viewer_shows_tool_events_filters_by_kind_and_escapes(tape: Path, tmp_path: Path) -> None:
    app = ViewerApp(tape, export_dir=tmp_path / "exports", cache_dir=tmp_path / "cache")
    async with app.run_test(size=(160, 40)) as pilot:
        for _ in range(200):
            if app.progress is None:
                break
            await asyncio.sleep(0.02)
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)
        text = screen_text(app)
        assert "tools" in text and "effects" in text and "6/1" in text and "6/2" in text
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, EventsScreen)
        text = screen_text(app)
        assert "[tool] write_file(" in text and "[connect] 169.254.169.254:80" in text
        assert " tool " in text and " exec " in text
        await pilot.press("t", "t")  # kind: network, then tool
        await pilot.pause()
        filtering = [w for w in app.workers if w.group == "filter"]
        if filtering:
            await app.workers.wait_for_complete(filtering)
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, EventsScreen) and screen.filter.kind == "tool"
        assert len(screen.positions) == 6
        assert "kind=tool" in screen_text(app)
        await pilot.press("G", "enter")  # the last tool call: note(title=HOSTILE_ARG)
        await pilot.pause()
        assert isinstance(app.screen, EventScreen)
        text = screen_text(app)
        assert "\x1b" not in text and "\x07" not in text
        assert "tool: note" in text
        assert "\\u001b[31mred\\u001b[0m" in text and "<script>alert(1)</script>" in text
        assert "effects: fs 1 exec 1" in text
        assert app.is_running


def test_viewer_event_view_of_a_tool_call(tape: Path, tmp_path: Path) -> None:
    from failcore.tui.lines import chain_status
    from failcore.tui.render import render_event

    index = build_index(tape)
    rows = [index.row(p) for p in index.run_rows[RUN]]
    row = next(r for r in rows if r.path.startswith("[tool] summarize"))
    text = render_event(index.load_event(row), chain_status(index.raw_line(row), b""), row).plain
    assert "contract drift: expected json, got text" in text
    assert "contract_drift: summarize: expected json, got text" in text
    assert "duration: 12 ms" in text and "args hash: " in text
    fs_row = next(r for r in rows if r.kind == "fs" and r.outcome == "BLOCKED")
    text = render_event(index.load_event(fs_row), chain_status(index.raw_line(fs_row), b""), fs_row).plain
    assert "path: /etc/passwd" in text and "op: write" in text and "rule: fs.write_outside_roots" in text


def test_report_shows_tool_calls_and_effects_inert(tape: Path) -> None:
    report = collect_report(tape, RUN)
    html = render_report(report)
    assert "<script" not in html.lower()
    assert "\x1b" not in html and "\x07" not in html and "\u202e" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html  # the path
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in html  # the argv
    assert "\\x1b]0;pwned\\x07" in html
    assert 'id="tools"' in html and "Tool calls (6)" in html
    assert "Blocked (3)" in html and "Failed (1)" in html
    assert html.count("fs.write_outside_roots") >= 3
    assert "[connect] 169.254.169.254:80" in html
    assert "expected json, got text" in html
    assert "[exec] git [&#34;git&#34;,&#34;status&#34;,&#34;--short&#34;]" in html
    assert [ev["tool"]["name"] for ev in report.tool_calls] == [
        "write_file", "write_file", "git_status", "fetch_url", "summarize", "note",
    ]  # fmt: skip
    assert {ev["kind"] for ev in report.blocked} == {"fs", "tool", "connect"}
    assert ("tool calls", "6") in [(label, value) for label, value, _ in _cards(report)]


def _cards(report: Any) -> list[tuple[str, str, str]]:
    from failcore.report.page import _tool_cards

    return _tool_cards(report)


# --- diff ----------------------------------------------------------------------------------------


def two_runs(tmp_path: Path, b_events: list[dict[str, Any]]) -> Path:
    tape = tmp_path / "tape"
    write_events(tape, tmp_path / "keys", mixed_run("run-a") + b_events)
    return tape


def test_diff_names_the_first_tool_call_whose_args_differ(tmp_path: Path) -> None:
    # Run B is run A with one tool argument changed (and the file it then wrote).
    tape = two_runs(tmp_path, mixed_run("run-b", T0 + 100, write_path="/tmp/sandbox/other.txt"))
    result = diff_runs(tape, "run-a", "run-b")
    assert result.first_divergence is None  # the network requests are the same
    first = result.first_tool_divergence
    assert first is not None and result.diverged
    seqs = {
        run: next(e["seq"] for e in read(tape) if e.get("kind") == "tool" and e["run"] == run)
        for run in ("run-a", "run-b")
    }
    assert first["kind"] == "tool" and first["differs"] == ["args"]
    assert (first["a"]["seq"], first["b"]["seq"]) == (seqs["run-a"], seqs["run-b"])
    assert first["a"]["tool"] == first["b"]["tool"] == "write_file"
    assert first["a"]["args_hash"] != first["b"]["args_hash"]
    assert (first["pointer"], first["recorded"], first["live"]) == (
        "/path",
        '"/tmp/sandbox/out.txt"',
        '"/tmp/sandbox/other.txt"',
    )
    assert result.to_dict()["tool_calls"] == {"a": 6, "b": 6}
    done = failcore(tmp_path / "home", "diff", "run-a", "run-b", "--tape", str(tape))
    assert done.returncode == 1, done.stderr
    assert f"first divergent tool call: #{seqs['run-a']} → #{seqs['run-b']} write_file (args)" in done.stdout
    assert 'args differ at /path: "/tmp/sandbox/out.txt" → "/tmp/sandbox/other.txt"' in done.stdout


def test_diff_of_the_same_tool_calls_with_keys_reordered_is_the_same(tmp_path: Path) -> None:
    b = mixed_run("run-b", T0 + 100)
    for ev in b:
        if ev.get("kind") == "tool":
            ev["tool"]["args"] = dict(reversed(list(ev["tool"]["args"].items())))
    result = diff_runs(two_runs(tmp_path, b), "run-a", "run-b")
    assert result.first_tool_divergence is None and not result.diverged


def test_diff_names_a_changed_outcome_and_a_call_only_one_run_made(tmp_path: Path) -> None:
    b = mixed_run("run-b", T0 + 100)
    git = next(ev for ev in b if ev.get("action") == "git_status")
    git.update(decision="BLOCK", outcome="BLOCKED", rule="exec.not_allowed")
    first = diff_runs(two_runs(tmp_path / "one", b), "run-a", "run-b").first_tool_divergence
    assert first is not None
    assert first["differs"] == ["outcome", "decision"] and first["b"]["tool"] == "git_status"
    assert "pointer" not in first
    extra = mixed_run("run-b", T0 + 100)
    extra.insert(3, tool("run-b", T0 + 102.05, "list_dir", {"path": "."}))
    first = diff_runs(two_runs(tmp_path / "two", extra), "run-a", "run-b").first_tool_divergence
    assert first is not None and first["kind"] == "only_in_b" and first["b"]["tool"] == "list_dir"


def test_diff_output_escapes_hostile_tool_args(tmp_path: Path) -> None:
    b = mixed_run("run-b", T0 + 100)
    note = next(ev for ev in b if ev.get("action") == "note")
    note["tool"]["args"] = {"title": HOSTILE_ARG + "\x1b[0m changed"}
    tape = two_runs(tmp_path, b)
    done = failcore(tmp_path / "home", "diff", "run-a", "run-b", "--tape", str(tape))
    assert done.returncode == 1
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    assert "first divergent tool call:" in done.stdout and "args differ at /title" in done.stdout
    assert '"\\u001b[31mred\\u001b[0m' in done.stdout


def test_first_difference_names_a_json_pointer() -> None:
    assert first_difference({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 3]}) == ("/b/1", 2, 3)
    assert first_difference({"a/b": 1}, {"a/b": 1, "c": 2}) == ("/c", None, 2)
    assert first_difference({"x~": True}, {"x~": 1}) == ("/x~0", True, 1)
    assert first_difference([1], [1, 2]) == ("/1", None, 2)
    assert first_difference({"k": "v"}, {"k": "v"}) is None


def test_hostile_fixtures_hold_what_the_tests_claim() -> None:
    assert "\x1b" in HOSTILE_ARG and "<script>" in HOSTILE_ARG
    assert "\x1b" in HOSTILE_PATH and "<script>" in HOSTILE_PATH and "\u202e" in HOSTILE_PATH
    assert any("<script>" in a for a in HOSTILE_ARGV)


# --- real runs of the runtime API (failcore.run / guard) --------------------------------------------


def real_agent(tape: Path, run_id: str, third_path: str) -> None:
    """An agent whose runs differ only in the path argument of its third tool call."""
    from failcore import guard, run

    with run(tape=tape, run_id=run_id):

        @guard(name="write_file")
        def write_file(path: str, content: str) -> dict[str, int]:
            with open(path, "w") as f:
                f.write(content)
            return {"written": len(content)}

        @guard(name="read_file")
        def read_file(path: str) -> str:
            with open(path) as f:
                return f.read()

        write_file("notes.txt", "hello")
        read_file("notes.txt")
        write_file(third_path, "second")
        read_file("notes.txt")


def test_diff_of_two_real_runs_that_differ_in_one_tool_calls_args(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.runtime.helpers import enter_workdir

    enter_workdir(tmp_path, monkeypatch)
    tape = tmp_path / "tape"
    real_agent(tape, "real-a", "a.txt")
    real_agent(tape, "real-b", "b.txt")
    tools = {
        run: [e for e in read(tape) if e.get("kind") == "tool" and e["run"] == run]
        for run in ("real-a", "real-b")
    }
    assert [len(calls) for calls in tools.values()] == [4, 4]
    result = diff_runs(tape, "real-a", "real-b")
    assert result.first_divergence is None and result.diverged
    first = result.first_tool_divergence
    assert first is not None and first["kind"] == "tool" and first["differs"] == ["args"]
    assert (first["a"]["seq"], first["b"]["seq"]) == (tools["real-a"][2]["seq"], tools["real-b"][2]["seq"])
    assert first["a"]["tool"] == "write_file"
    assert (first["pointer"], first["recorded"], first["live"]) == ("/path", '"a.txt"', '"b.txt"')
    # The same runs, compared with themselves: no divergence.
    assert diff_runs(tape, "real-a", "real-a").first_tool_divergence is None


def test_real_run_with_a_hostile_file_name_shows_inert_in_show_and_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from failcore import guard, run
    from tests.runtime.helpers import enter_workdir

    work = enter_workdir(tmp_path, monkeypatch)
    tape = tmp_path / "tape"
    name = "\x1b]0;pwned\x07<script>alert(4)\x1b[31m.txt"  # a file name cannot hold the "/" of </script>
    with run(tape=tape, run_id="real-hostile"):

        @guard(name="save")
        def save(path: str) -> None:
            with open(path, "w") as f:
                f.write("x")

        save(name)
    (fs_event,) = [e for e in read(tape) if e.get("kind") == "fs"]
    assert fs_event["fs"]["path"] == str((work / name).resolve())
    out = failcore(tmp_path / "home", "show", "real-hostile", "--tape", str(tape)).stdout
    assert "\x1b" not in out and "\x07" not in out
    assert "[fs] write " in out and "\\x1b]0;pwned\\x07<script>alert(4)\\x1b[31m.txt" in out
    assert '[tool] save(path="\\u001b]0;pwned\\u0007<script>alert(4)\\u001b[31m.txt") effects: fs 1' in out
    html = render_report(collect_report(tape, "real-hostile"))
    assert "<script" not in html.lower() and "\x1b" not in html
    assert "&lt;script&gt;alert(4)\\x1b[31m.txt" in html and "Tool calls (1)" in html


def test_the_issue_example_reads_as_one_blocked_write_in_list_show_and_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from failcore import guard, run
    from tests.runtime.helpers import enter_workdir

    enter_workdir(tmp_path, monkeypatch)
    tape = tmp_path / "tape"
    with run(policy="fs_safe", strict=True, tape=tape, run_id="issue-13"):

        @guard(name="write_file")
        def write_file(path: str, content: str) -> None:
            with open(path, "w") as f:
                f.write(content)

        with pytest.raises(PermissionError):
            write_file("../etc/passwd", "hack")  # blocked before it runs; evidence recorded
        write_file("notes.txt", "fine")
    home = tmp_path / "home"
    (row,) = orjson.loads(failcore(home, "list", "--tape", str(tape), "--json").stdout)
    counts = ("tool_calls", "tool_blocked", "effects_fs", "effects_blocked", "runtime_block_rules")
    assert {k: row[k] for k in counts} == {
        "tool_calls": 2,
        "tool_blocked": 1,
        "effects_fs": 2,
        "effects_blocked": 1,
        "runtime_block_rules": {"fs.write_outside_roots": 2},
    }
    out = failcore(home, "show", "issue-13", "--tape", str(tape), "--kind", "tool").stdout
    blocked = next(line for line in out.splitlines() if "../etc/passwd" in line)
    assert "BLOCKED" in blocked and "fs.write_outside_roots" in blocked
    assert '[tool] write_file(path="../etc/passwd", content="hack") effects: fs 1 blocked 1' in blocked
    html = render_report(collect_report(tape, "issue-13"))
    assert "Blocked (2)" in html and "Tool calls (2)" in html


def test_the_end_of_run_summary_names_tool_calls_and_effects(tape: Path) -> None:
    from rich.console import Console

    from failcore.views.tables import run_summary_table

    (summary,) = [s for s in summarize_tape(tape) if s.run == RUN]
    console = Console(width=400, record=True)
    console.print(run_summary_table(summary.to_dict()))
    text = console.export_text()
    assert "tool calls" in text and "6 (1 blocked, 1 failed, 1 contract drift; blocked by" in text
    assert "fs.write_outside_roots 2, net.metadata 1" in text
    assert "effects" in text and "fs 3, exec 2, connect 1 (2 blocked)" in text
    plain = Console(width=400, record=True)
    plain.print(run_summary_table(RunSummary(run="r", requests=1).to_dict()))
    assert "tool calls" not in plain.export_text() and "effects" not in plain.export_text()


def test_a_child_joining_failcore_run_shows_its_tool_calls_between_its_exchanges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, upstream: Any
) -> None:
    """A real `failcore run -- python agent.py` whose agent guards an HTTPS fetch and a file write: the
    proxy's exchange and the child's events are one run, listed in tape order by show, counted by list,
    and in the report."""
    from tests.runtime.helpers import AGENT, enter_workdir
    from tests.runtime.helpers import failcore_run as run_under_failcore

    work = enter_workdir(tmp_path, monkeypatch)
    script, tape = tmp_path / "agent.py", tmp_path / "tape"
    script.write_text(AGENT)
    done = run_under_failcore(tape, upstream, sys.executable, str(script), upstream.url, cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = done.stdout.split()[0]
    events = [e for e in read(tape) if e.get("run") == run_id]
    expected = []  # each event's text in the table, in tape order, from the recorded fields
    for ev in events:
        if ev["kind"] == "network":
            expected.append(ev["summary"])
        elif ev["kind"] == "tool":
            expected.append(f"[tool] {ev['tool']['name']}(")
        elif ev["kind"] == "fs":
            expected.append(f"[fs] {ev['fs']['op']} {ev['fs']['path']}")
        elif ev["kind"] == "connect":
            expected.append(f"[connect] {ev['target']['host']}:{ev['target']['port']}")
    assert len(expected) == 5  # connect, the exchange, fetch, write, save
    home = tmp_path / "home"
    out = failcore(home, "show", "--last", "--tape", str(tape)).stdout
    positions = [out.find(text) for text in expected]
    assert -1 not in positions and positions == sorted(positions), out
    (row,) = orjson.loads(failcore(home, "list", "--tape", str(tape), "--json").stdout)
    assert (row["requests"], row["tool_calls"], row["effects_fs"], row["effects_connect"]) == (1, 2, 1, 1)
    html = render_report(collect_report(tape, run_id))
    assert "Tool calls (2)" in html and all(text.split("(")[0] in html for text in expected)
