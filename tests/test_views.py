"""What a person sees: tables that fit the terminal, DLP hits and blocks counted in summaries."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from failcore.runs import RunSummary, UnknownRun, resolve_run, summarize_tape
from failcore.views import fmt
from failcore.views.tables import events_table, run_summary_table, runs_table
from tests.helpers import proxied_client

AWS_KEY = "AKIAZ7Q2XRHLYW4NPF6K"


def event(seq: int, **kw) -> dict:  # type: ignore[no-untyped-def,type-arg]
    base = {
        "kind": "network",
        "seq": seq,
        "run": "run-20261129T120000Z-abc123",
        "ts_start": 1_764_000_000.0 + seq,
        "ts_end": 1_764_000_000.5 + seq,
        "decision": "ALLOW",
        "outcome": "ok",
        "status": 200,
        "target": {"host": "api.openai.com", "port": 443, "scheme": "https"},
        "summary": "POST /v1/chat/completions",
        "rule": None,
        "latency_ms": 512.0,
        "would_block": False,
    }
    base.update(kw)
    return base


def render(table, width: int) -> list[str]:  # type: ignore[no-untyped-def]
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(table)
    return console.export_text().splitlines()


EVENTS = [
    event(1),
    event(
        2,
        decision="BLOCK",
        outcome="BLOCKED",
        status=403,
        rule="no-admin",
        summary="DELETE /v1/files/file-abc",
    ),
    event(
        3,
        decision="ALLOW",
        dlp={"hits": [{"rule": "aws-access-key-id", "severity": "critical", "action": "BLOCK"}]},
        llm={
            "response_model": "gpt-4o-mini-2024-07-18",
            "usage": {"input_tokens": 1200, "output_tokens": 30},
            "cost": {"usd": 0.000198},
        },
    ),
]


@pytest.mark.parametrize("width", [80, 100])
def test_event_table_at_a_narrow_terminal_keeps_whole_headers_seq_and_decision(width: int) -> None:
    lines = render(events_table("run x", EVENTS, width), width)
    header = next(line for line in lines if "seq" in line)
    for name in ("seq", "decision", "outcome", "status", "summary"):
        assert f" {name}" in f" {header}", f"{name!r} shortened or dropped at {width} columns:\n{header}"
    assert all(len(line) <= width for line in lines)
    row = next(line for line in lines if line.strip().startswith("2 "))
    assert "BLOCK" in row and "403" in row


def test_event_table_on_a_wide_terminal_gains_rule_model_tokens_and_cost() -> None:
    lines = render(events_table("run x", EVENTS, 200), 200)
    header = next(line for line in lines if "seq" in line)
    for name in ("time", "rule", "dlp", "model", "tokens", "$", "ms"):
        assert name in header.split(), header
    row = next(line for line in lines if line.strip().startswith("3 "))
    assert "gpt-4o-mini-2024-07-18" in row and "1,200/30" in row and "$0.000198" in row
    # The DLP hit whose rule says BLOCK but was let through is marked on the decision.
    assert "ALLOW*" in row


def test_event_table_shows_a_target_of_the_wrong_type_as_no_host() -> None:
    """A line another writer produced: a string or a list where the target object belongs."""
    odd = [{**EVENTS[0], "seq": 7, "target": "api.example"}, {**EVENTS[0], "seq": 8, "target": [1, 2]}]
    lines = render(events_table("run x", odd, 200), 200)
    assert any(line.strip().startswith("7 ") for line in lines)
    assert any(line.strip().startswith("8 ") for line in lines)


def test_runs_table_keeps_the_run_id_whole_and_full_headers_at_80_columns() -> None:
    runs = [RunSummary(run="run-20261129T120000Z-abc123", requests=3, blocked=1, hosts={"a.example:443": 3})]
    lines = render(runs_table("runs", runs, 80), 80)
    assert any("run-20261129T120000Z-abc123" in line for line in lines)
    header = next(line for line in lines if "requests" in line)
    assert "blocked" in header and "…" not in header


def test_summary_counts_dlp_hits_would_blocks_and_blocks_by_rule() -> None:
    summary = RunSummary(run="r")
    for ev in EVENTS:
        summary.add(ev)
    assert (summary.blocked, summary.block_rules) == (1, {"no-admin": 1})
    assert (summary.dlp_hits, summary.dlp_exchanges, summary.dlp_would_block) == (1, 1, 1)
    assert summary.dlp_severities == {"critical": 1}
    text = "\n".join(render(run_summary_table(summary.to_dict()), 120))
    assert "│ 1 (no-admin 1) " in text
    assert "DLP hits" in text and "1 let through that a BLOCK rule matched" in text


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.0, "$0.0000"), (0.000198, "$0.000198"), (0.5, "$0.5000"), (1234.5, "$1,234.50"), (None, "?")],
)
def test_money_reads_with_the_digits_it_needs(value, shown) -> None:  # type: ignore[no-untyped-def]
    assert fmt.usd(value) == shown


@pytest.mark.parametrize(
    ("value", "report", "cell"),
    [
        (None, "-", "-"),
        (0.0, "$0.0000", "0"),
        (0.000198, "$0.000198", "0.02¢"),
        (0.0125, "$0.0125", "0.0125"),
        (20.0, "$20.0000", "20.00"),
        (1234.5, "$1,234.5000", "1234.50"),
    ],
)
def test_the_report_and_the_viewer_format_money_with_the_same_function(value, report, cell) -> None:  # type: ignore[no-untyped-def]
    # The report (an audit document) keeps four decimals at every size; the viewer's column fits 7 cells.
    from failcore.report.filters import fmt_usd
    from failcore.tui.render import fmt_cost

    assert fmt.usd(value, missing="-", exact=True) == fmt_usd(value) == report
    assert fmt.usd(value, missing="-", cell=True) == fmt_cost(value) == cell


# ----------------------------------------------------------------- through the real proxy


def test_observe_mode_dlp_hit_is_counted_and_marked(start_proxy, upstream, policy_file, tmp_path) -> None:
    policy = policy_file("version: 1\nmode: observe\ndlp: {severity_actions: {high: BLOCK}}\n")
    proxy = start_proxy(policy)
    with proxied_client(proxy) as client:
        sent = client.post(upstream.url + "/echo", json={"note": f"my key is {AWS_KEY}"})
    assert sent.status_code == 200  # observe mode lets it through
    proxy.flush()
    (summary,) = summarize_tape(tmp_path / "tape")
    assert summary.dlp_hits >= 1 and summary.dlp_would_block == 1
    text = "\n".join(render(run_summary_table(summary.to_dict()), 120))
    assert "DLP hits" in text and "let through that a BLOCK rule matched" in text


def test_runs_are_named_by_a_unique_prefix_or_suffix(start_proxy, upstream, tmp_path: Path) -> None:
    tape = tmp_path / "tape"
    for run_id in ("run-alpha-111", "run-beta-222", "run-beta-333"):
        proxy = start_proxy(tape=tape, run_id=run_id)
        proxy.stop()
    assert resolve_run(tape, "run-alpha") == "run-alpha-111"
    assert resolve_run(tape, "333") == "run-beta-333"
    with pytest.raises(UnknownRun, match="names 2 runs"):
        resolve_run(tape, "run-beta")
    with pytest.raises(UnknownRun, match="no run 'run-nope'"):
        resolve_run(tape, "run-nope")


def test_moments_and_counts_read_the_same_in_every_view(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Local time in the terminal and the viewer, UTC in the shared report; one function says both.
    import time

    from failcore.report.filters import fmt_tokens as report_tokens
    from failcore.report.filters import fmt_utc
    from failcore.tui.render import fmt_time, fmt_tokens

    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30, no daylight saving
    time.tzset()
    try:
        ts = 1_767_225_601.25  # 2026-01-01 00:00:01.250 UTC
        assert fmt.when(ts) == "2026-01-01 05:30:01"
        assert fmt_time(ts) == fmt.when(ts, date=False, millis=True) == "05:30:01.250"
        assert fmt_utc(ts) == fmt.when(ts, utc=True) == "2026-01-01 00:00:01 UTC"
        assert fmt_utc(ts, with_date=False) == "00:00:01.250"
        assert fmt.when(None) == fmt_time(None) == fmt_utc(None) == "-"
    finally:
        monkeypatch.undo()
        time.tzset()
    shown = (report_tokens(1_234_567), fmt_tokens(1_234_567), fmt_tokens(12_345))
    assert shown == ("1,234,567", "1.2M", "12k")
