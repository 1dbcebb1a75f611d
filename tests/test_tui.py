"""`failcore view`: the tape index, rendering of hostile content, and the Textual app driven by pilot."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from failcore.tape.reader import GENESIS_PREV, segment_name
from failcore.tape.writer import encode_line
from failcore.tui.app import EventScreen, EventsScreen, HelpScreen, RunsScreen, ViewerApp
from failcore.tui.filters import EventFilter
from failcore.tui.index import build_index, chain_status, extract_fields
from failcore.tui.render import parse_sse, stream_text
from tests.tui_helpers import screen_text

RUN = "run-fixed-0001"
T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
HOSTILE_PATH = "/x[bold red]x[/][@click=app.quit]"
SSE_BODY = (
    'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
    'data: {"choices":[{"delta":{"content":"lo"}}]}\n\n'
    "data: [DONE]\n\n"
)


def _body(text: str) -> dict[str, Any]:
    return {"size": len(text), "cap": 1048576, "sha256": "0" * 64, "sha256_of": "decoded", "truncated": False,
            "text": text}  # fmt: skip


def _network(n: int, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": "network", "v": 1, "run": RUN, "ts_start": T0 + n, "ts_end": T0 + n + 0.25,
        "flow": f"flow-{n}", "egress": "NETWORK", "action": "http.request",
        "target": {"host": "api.openai.com", "port": 443, "scheme": "https"},
        "method": "POST", "path": "/v1/chat/completions", "summary": "POST /v1/chat/completions",
        "decision": "ALLOW", "rule": "allow-llm", "reason": "llm", "would_block": False,
        "outcome": "ok", "fail_reason": None, "error": None, "status": 200,
        "latency_ms": 250.0, "ttfb_ms": 20.0, "bytes_out": 10, "bytes_in": 20,
        "request": {"http_version": "HTTP/1.1", "headers": [["content-type", "application/json"]],
                    "body": _body('{"model":"gpt-4o-mini","messages":[]}')},
        "response": {"http_version": "HTTP/1.1", "headers": [["content-type", "application/json"]],
                     "body": _body('{"id":"c1","choices":[]}')},
        "stream": None,
    }  # fmt: skip
    event.update(changes)
    return event


LLM = {
    "provider": "openai", "api": "chat", "request_model": "gpt-4o-mini", "response_model": "gpt-4o-mini",
    "stream": False, "finish_reason": "stop", "tool_calls": 0,
    "usage": {"known": True, "input_tokens": 1200, "output_tokens": 300, "total_tokens": 1500},
    "cost": {"usd": 0.0125, "reason": None},
}  # fmt: skip
DLP = {"hits": [{"rule": "aws-access-key", "severity": "high", "category": "cloud",
                 "location": "request.body:/messages/0/content", "preview": "AKIA…[masked]",
                 "fingerprint": "hmac-sha256:abcd", "action": "WARN"}]}  # fmt: skip


def fixed_events() -> list[dict[str, Any]]:
    hostile_headers = [["x-evil", "\x1b[31mred\x1b[0m [bold]b[/]"], ["content-type", "text/plain"]]
    return [
        {"kind": "run_start", "v": 1, "run": RUN, "ts_start": T0, "ts_end": None,
         "detail": {"mode": "enforce"}},
        _network(1, llm=LLM),
        _network(2, decision="WARN", would_block=True, dlp=DLP, llm=LLM),
        _network(3, decision="BLOCK", outcome="BLOCKED", status=403, target={"host": "evil.example",
                 "port": 443, "scheme": "https"}, path="/exfil", response=None, latency_ms=1.0),
        _network(4, outcome="FAIL", fail_reason="upstream_status", status=502, path="/v1/models"),
        _network(5, response={"http_version": "HTTP/1.1",
                              "headers": [["content-type", "text/event-stream"]], "body": _body(SSE_BODY)}),
        _network(6, path=HOSTILE_PATH, target={"host": "[reverse]h[/]", "port": 80, "scheme": "http"},
                 request={"http_version": "HTTP/1.1", "headers": hostile_headers,
                          "body": _body("\x1b]0;pwned\x07[@click=app.quit]boom[/] \u202eevil")}),
        {"kind": "run_end", "v": 1, "run": RUN, "ts_start": T0 + 7, "ts_end": T0 + 7, "detail": {}},
    ]  # fmt: skip


def write_tape(directory: Path, segments: list[list[dict[str, Any]]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    prev, seq = GENESIS_PREV, 0
    for number, events in enumerate(segments, 1):
        with open(directory / segment_name(number), "wb") as f:
            for event in events:
                seq += 1
                line, prev = encode_line(prev, seq, orjson.dumps(event))
                f.write(line)


def append_events(directory: Path, segment: int, events: list[dict[str, Any]]) -> None:
    path = directory / segment_name(segment)
    last = path.read_bytes().splitlines()[-1]
    prev, seq = last[-66:-2], int(orjson.loads(last)["seq"])
    with open(path, "ab") as f:
        for event in events:
            seq += 1
            line, prev = encode_line(prev, seq, orjson.dumps(event))
            f.write(line)


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("FAILCORE_HOME", str(tmp_path / "home"))
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def tape(tmp_path: Path) -> Path:
    directory = tmp_path / "tape"
    write_tape(directory, [fixed_events()])
    return directory


def make_app(tape: Path, tmp_path: Path, **kwargs: Any) -> ViewerApp:
    return ViewerApp(tape, export_dir=tmp_path / "exports", **kwargs)


async def wait_indexed(app: ViewerApp, pilot: Any) -> None:
    for _ in range(200):
        if app.progress is None:
            break
        await asyncio.sleep(0.02)
    await pilot.pause()


async def wait_filtered(app: ViewerApp, pilot: Any) -> None:
    await pilot.pause()
    filtering = [w for w in app.workers if w.group == "filter"]
    if filtering:  # an empty list would mean "every worker", the never-ending index loop included
        await app.workers.wait_for_complete(filtering)
    await pilot.pause()


# --- index ----------------------------------------------------------------------------------------


def test_extract_fields_reads_head_and_tail_without_bodies(tape: Path) -> None:
    lines = (tape / segment_name(1)).read_bytes().splitlines()
    for raw in lines:
        full = orjson.loads(raw)
        fields = extract_fields(raw)
        assert fields is not None
        for key in ("kind", "run", "seq", "decision", "status", "path", "llm", "dlp", "target"):
            assert fields.get(key) == full.get(key)
        if full["kind"] == "network":
            assert "request" not in fields and "response" not in fields


def test_extract_fields_falls_back_when_a_nested_key_looks_like_a_top_level_one() -> None:
    event = {"kind": "policy", "v": 1, "run": RUN, "ts_start": T0, "detail": {"request": {"llm": 1}, "x": 2}}
    raw, _ = encode_line(GENESIS_PREV, 1, orjson.dumps(event))
    fields = extract_fields(raw[:-1])
    assert fields is not None and fields["detail"] == event["detail"]
    assert extract_fields(b'{"prev":"broken"}') is None


def test_index_rows_and_run_totals(tape: Path) -> None:
    index = build_index(tape)
    assert index.rows == 8
    (stats,) = index.ordered_runs()
    assert (stats.requests, stats.blocked, stats.warned, stats.failed) == (6, 1, 1, 1)
    assert stats.tokens == 3000 and stats.cost_usd == pytest.approx(0.025)
    rows = [index.row(p) for p in index.run_rows[RUN]]
    assert [r.decision for r in rows[1:4]] == ["ALLOW", "WARN", "BLOCK"]
    assert rows[2].dlp_hits == 1 and rows[1].dlp_hits is None
    assert rows[1].tokens == 1500 and rows[3].tokens is None and rows[3].cost_usd is None
    event = index.load_event(rows[6])
    assert event is not None and event["path"] == HOSTILE_PATH


def test_sealed_segments_are_cached_privately_and_stale_caches_ignored(tmp_path: Path) -> None:
    events = fixed_events()
    directory = tmp_path / "tape"
    write_tape(directory, [events[:4], events[4:]])
    cache = tmp_path / "cache"
    first = build_index(directory, cache)
    cached = cache / f"{segment_name(1)}.idx"
    assert cached.exists() and not (cache / f"{segment_name(2)}.idx").exists()  # the last one may grow
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    second = build_index(directory, cache)
    assert [second.row(i) for i in range(second.rows)] == [first.row(i) for i in range(first.rows)]
    # A cache whose header claims another segment size must not be trusted.
    seg = directory / segment_name(1)
    os.utime(seg, ns=(seg.stat().st_atime_ns, seg.stat().st_mtime_ns + 10**9))
    cached.write_bytes(cached.read_bytes().replace(b'"rows":4', b'"rows":3'))
    third = build_index(directory, cache)
    assert third.rows == first.rows


def test_chain_status_recomputes_hash_and_checks_prev_link(tape: Path) -> None:
    index = build_index(tape)
    row = index.row(3)
    raw = index.raw_line(row)
    assert chain_status(raw, index.previous_hash(3)).ok
    tampered = raw.replace(b"/exfil", b"/exfix")
    status = chain_status(tampered, index.previous_hash(3))
    assert not status.hash_ok and status.prev_ok
    assert not chain_status(raw, index.previous_hash(2)).prev_ok


def test_filters_and_sse_reassembly(tape: Path) -> None:
    index = build_index(tape)
    rows = [index.row(p) for p in index.run_rows[RUN]]
    assert [r.seq for r in rows if EventFilter(status="5xx").matches_row(r)] == [5]
    assert [r.seq for r in rows if EventFilter(status="4xx").matches_row(r)] == [4]
    assert [r.seq for r in rows if EventFilter(host="EVIL").matches_row(r)] == [4]
    assert EventFilter(text='say "hi"').needle() == b'say \\"hi\\"'
    events = parse_sse(SSE_BODY)
    assert [e.data for e in events][-1] == "[DONE]"
    assert stream_text(events) == "Hello"


# --- app ------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_navigation_filters_and_jumps(tape: Path, tmp_path: Path) -> None:
    app = make_app(tape, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_indexed(app, pilot)
        assert isinstance(app.screen, RunsScreen)
        assert RUN in screen_text(app) and "0.0250" in screen_text(app)
        await pilot.press("enter")
        assert isinstance(app.screen, EventsScreen)
        events = app.screen
        assert "8/8 events" in screen_text(app)
        await pilot.press("b")
        assert events.positions[events.query_one("RowList").cursor] == 3  # type: ignore[attr-defined]
        await pilot.press("x")
        assert app.index.row(events.positions[events.query_one("RowList").cursor]).seq == 5  # type: ignore[attr-defined]
        await pilot.press("d", "d")  # decision: ALLOW → WARN
        await wait_filtered(app, pilot)
        assert events.filter.decision == "WARN" and [app.index.row(p).seq for p in events.positions] == [3]
        await pilot.press("c", "slash")
        await pilot.press(*"pwned", "enter")
        await wait_filtered(app, pilot)
        assert [app.index.row(p).seq for p in events.positions] == [7]
        await pilot.press("enter")
        assert isinstance(app.screen, EventScreen)
        await pilot.press("escape", "escape")
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen) and "next BLOCK" in screen_text(app)


@pytest.mark.asyncio
async def test_hostile_content_is_shown_literally(tape: Path, tmp_path: Path) -> None:
    app = make_app(tape, tmp_path)
    async with app.run_test(size=(120, 60)) as pilot:
        await wait_indexed(app, pilot)
        await pilot.press("enter", "G")
        await pilot.press("up", "enter")
        await pilot.pause()
        assert isinstance(app.screen, EventScreen) and app.is_running
        text = screen_text(app)
        assert "[bold red]x[/][@click=app.quit]" in text
        assert "\\x1b[31mred\\x1b[0m [bold]b[/]" in text
        assert "\\x1b]0;pwned\\x07[@click=app.quit]boom[/] \\u202eevil" in text
        assert "\x1b" not in text
        # No style leaked from the recorded markup: the host line is not reversed, the path not red.
        strips = app.screen._compositor.render_update(full=True).strips
        segments = [segment for line in strips for strip in line for segment in strip]
        assert any("[bold red]" in segment.text for segment in segments)
        for segment in segments:
            if "[bold red]" in segment.text or "[reverse]" in segment.text:
                style = segment.style
                assert style is None or not (style.reverse or (style.color and style.color.name == "red"))
        await pilot.click(offset=(30, 5))
        assert app.is_running


@pytest.mark.asyncio
async def test_copy_event_writes_private_json(tape: Path, tmp_path: Path) -> None:
    app = make_app(tape, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_indexed(app, pilot)
        await pilot.press("enter", "down", "down", "enter", "y")
        await pilot.pause()
    exported = tmp_path / "exports" / f"{RUN}-seq3.json"
    assert orjson.loads(exported.read_bytes())["dlp"] == DLP
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600


@pytest.mark.asyncio
async def test_follow_shows_events_appended_by_a_writer(tape: Path, tmp_path: Path) -> None:
    app = make_app(tape, tmp_path, poll=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_indexed(app, pilot)
        await pilot.press("enter", "f")
        assert app.following
        append_events(tape, 1, [_network(10, path="/appended-later")])
        for _ in range(100):
            await asyncio.sleep(0.02)
            if app.index.rows == 9:
                break
        await pilot.pause()
        assert isinstance(app.screen, EventsScreen) and "9/9 events" in screen_text(app)
        await pilot.press("G")
        await pilot.pause()
        assert "/appended-later" in screen_text(app)


# --- snapshots ------------------------------------------------------------------------------------


def _snapshot_app(tape: Path, tmp_path: Path) -> ViewerApp:
    return make_app(tape, tmp_path)


async def _settle(pilot: Any) -> None:
    await wait_indexed(pilot.app, pilot)


def test_snapshot_runs(snap_compare: Any, tape: Path, tmp_path: Path) -> None:
    assert snap_compare(_snapshot_app(tape, tmp_path), terminal_size=(80, 24), run_before=_settle)


def test_snapshot_events(snap_compare: Any, tape: Path, tmp_path: Path) -> None:
    async def open_run(pilot: Any) -> None:
        await _settle(pilot)
        await pilot.press("enter", "down", "down")

    assert snap_compare(_snapshot_app(tape, tmp_path), terminal_size=(80, 24), run_before=open_run)


def test_snapshot_event(snap_compare: Any, tape: Path, tmp_path: Path) -> None:
    async def open_event(pilot: Any) -> None:
        await _settle(pilot)
        await pilot.press("enter", "down", "down", "enter")
        await pilot.pause()

    assert snap_compare(_snapshot_app(tape, tmp_path), terminal_size=(80, 24), run_before=open_event)


def test_index_does_not_depend_on_key_order() -> None:
    """A tape written by another tool may put `run` after `request`: the row must keep its run."""
    from failcore.tape.writer import encode_line, serialise_event
    from failcore.tui.index import extract_fields

    event = {
        "kind": "network",
        "v": 1,
        "request": {"headers": [], "body": None},
        "run": "run-late",
        "status": 200,
    }
    line, _ = encode_line(b"0" * 64, 1, serialise_event(event))
    fields = extract_fields(line.rstrip(b"\n"))
    assert fields is not None and fields["run"] == "run-late" and fields["status"] == 200


def test_run_end_is_dated_when_the_run_ended(tmp_path: Path) -> None:
    # As the recorder writes it: ts_start is the run's start, ts_end when it ended.
    events = [
        {"kind": "run_start", "v": 1, "run": RUN, "ts_start": T0, "ts_end": None, "detail": {}},
        _network(1),
        {"kind": "run_end", "v": 1, "run": RUN, "ts_start": T0, "ts_end": T0 + 3600, "detail": {}},
    ]
    write_tape(tmp_path / "t", [events])
    index = build_index(tmp_path / "t")
    rows = [index.row(p) for p in index.run_rows[RUN]]
    assert rows[-1].kind == "run_end" and rows[-1].ts == T0 + 3600
    (stats,) = index.ordered_runs()
    assert stats.started == T0


@pytest.mark.parametrize(
    ("usd", "shown"), [(None, "-"), (0.0, "0"), (0.000198, "0.02¢"), (0.0125, "0.0125"), (12.5, "12.50")]
)
def test_costs_keep_their_digits_in_seven_cells(usd: float | None, shown: str) -> None:
    from failcore.tui.render import fmt_cost

    assert fmt_cost(usd) == shown and len(shown) <= 7


def test_a_run_id_too_long_for_its_column_keeps_its_unique_suffix() -> None:
    from rich.text import Text

    from failcore.tui.rowlist import truncate_middle

    cut = truncate_middle(Text("run-20261129T185925Z-884811"), 15)
    assert cut.plain == "run-202…-884811" and cut.cell_len == 15


def test_run_totals_are_the_ones_failcore_list_counts(tmp_path: Path) -> None:
    # One aggregator (runs.RunSummary) for `list`, `show`, the report and the viewer: the viewer's index,
    # counted per segment and merged (and read back from its cache), says what summarize_tape says,
    # connections that never became an HTTP exchange included (they are not requests).
    from failcore.runs import summarize_tape
    from failcore.tui.index import TapeIndex, TapeIndexer

    handshake = _network(8, action="tls.handshake", outcome="FAIL", fail_reason="tls", status=None,
                         target={"host": "pinned.example", "port": 443, "scheme": "https"})  # fmt: skip
    raw_tcp = _network(9, action="tcp.stream", decision="BLOCK", outcome="BLOCKED", status=None,
                       rule="no-tcp")  # fmt: skip
    events = fixed_events()
    write_tape(tmp_path / "t", [events[:3], [*events[3:], handshake, raw_tcp]])
    expected = [s.to_dict() for s in summarize_tape(tmp_path / "t")]
    cache = tmp_path / "cache"
    for _ in range(2):  # the second pass reads the sealed segment's counts from the cache
        index = TapeIndex(tmp_path / "t")
        for chunk in TapeIndexer(tmp_path / "t", cache).scan():
            index.add_chunk(chunk)
        assert [s.to_dict() for s in index.ordered_runs()] == expected
    (stats,) = index.ordered_runs()
    assert (stats.requests, stats.tls_failures, stats.raw_tcp, stats.blocked) == (6, 1, 1, 2)
    assert stats.policy is None and stats.mode == "enforce"


def test_run_totals_survive_fields_of_the_wrong_type(tmp_path: Path) -> None:
    # Not written by failcore, but a tape is read as it is: a bad field is skipped, the rest still counts.
    events = [_network(1, target="not-a-dict", llm=LLM), _network(2, ts_start="soon", bytes_in="many")]
    write_tape(tmp_path / "t", [events])
    from failcore.runs import summarize_tape

    (stats,) = build_index(tmp_path / "t").ordered_runs()
    assert stats.requests == 2 and stats.started == T0 + 1
    assert summarize_tape(tmp_path / "t")[0].to_dict() == stats.to_dict()


def test_the_viewer_frames_sse_as_the_usage_meter_does() -> None:
    # One SSE decoder (failcore.framing): an event without data is not an event (HTML standard), CR
    # alone ends a line, and a U+2028 inside a JSON string does not (str.splitlines() split there).
    from failcore.conversation import read_conversation

    body = (
        "event: ping\n\n"
        'data: {"choices":[{"delta":{"content":"a\u2028b"}}]}\r\r'
        'data: {"choices":[{"delta":{"content":"!"}}]}\r\n\r\n'
    )
    events = parse_sse(body)
    assert len(events) == 2 and stream_text(events) == "a\u2028b!"
    request = '{"model":"m","messages":[]}'
    conversation = read_conversation("chat_completions", request, body, "text/event-stream")
    assert conversation is not None
    assert [turn.text for turn in conversation.response] == ["a\u2028b!"]
