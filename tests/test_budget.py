from __future__ import annotations

import math
import sqlite3
import stat
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from failcore.budget import BudgetBreach, BudgetStore, Usage
from failcore.policy import BudgetSpec, parse_policy

# A multiple of 60 and of 10, so bucket boundaries are easy to reason about.
T0 = 1_700_000_040.0
OPENAI = {"host": "api.openai.com", "provider": "openai", "model": "gpt-4o-mini"}


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def budgets(text: str) -> tuple[BudgetSpec, ...]:
    return parse_policy(textwrap.dedent(text), "budgets.yaml").budgets


def one_budget(window: str, limits: str, *, extra: tuple[str, ...] = ()) -> tuple[BudgetSpec, ...]:
    lines = ["budgets:", "  - id: b", f"    window: {window}", f"    limits: {limits}"]
    lines += [f"    {line}" for line in extra]
    return parse_policy("\n".join(lines) + "\n", "budgets.yaml").budgets


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def stores() -> Iterator[list[BudgetStore]]:
    opened: list[BudgetStore] = []
    yield opened
    for store in opened:
        store.close()


def make_store(
    stores: list[BudgetStore],
    specs: tuple[BudgetSpec, ...],
    clock: FakeClock,
    *,
    path: Path | None = None,
    run_id: str = "run-1",
    run_started: float = T0,
) -> BudgetStore:
    store = BudgetStore(path, specs, run_id=run_id, run_started=run_started, clock=clock, flush_interval=60)
    stores.append(store)
    return store


USAGE_CASES = [
    ("input_tokens", 100, Usage(input_tokens=60), Usage(input_tokens=40)),
    ("output_tokens", 100, Usage(output_tokens=99), Usage(output_tokens=1)),
    ("total_tokens", 100, Usage(total_tokens=50), Usage(total_tokens=70)),
    ("tool_calls", 3, Usage(tool_calls=2), Usage(tool_calls=1)),
    # 0.1 + 0.2 != 0.3 in floats; the store counts nano-dollars so the limit is reached exactly.
    ("cost_usd", 0.3, Usage(cost_usd=0.1), Usage(cost_usd=0.2)),
]


@pytest.mark.parametrize("window", ["run", "minute", "hour", "day"])
@pytest.mark.parametrize(("metric", "limit", "first", "second"), USAGE_CASES, ids=[c[0] for c in USAGE_CASES])
def test_usage_limit_blocks_once_reached(
    stores: list[BudgetStore],
    clock: FakeClock,
    window: str,
    metric: str,
    limit: float,
    first: Usage,
    second: Usage,
) -> None:
    store = make_store(stores, one_budget(window, f"{{{metric}: {limit}}}"), clock)
    store.reserve_request(**OPENAI)
    store.record(**OPENAI, usage=first)
    assert store.check(**OPENAI) is None
    store.reserve_request(**OPENAI)
    store.record(**OPENAI, usage=second)
    breach = store.check(**OPENAI)
    assert breach is not None
    assert (breach.budget, breach.metric, breach.window, breach.hard) == ("b", metric, window, True)
    assert breach.limit == limit
    assert math.isclose(breach.used, getattr(first, metric) + getattr(second, metric))


@pytest.mark.parametrize("window", ["run", "minute", "hour", "day"])
def test_request_limit_counts_reserved_requests(
    stores: list[BudgetStore], clock: FakeClock, window: str
) -> None:
    store = make_store(stores, one_budget(window, "{requests: 2}"), clock)
    assert store.check(**OPENAI) is None
    store.reserve_request(**OPENAI)
    assert store.check(**OPENAI) is None
    store.reserve_request(**OPENAI)  # still in flight: counted immediately
    breach = store.check(**OPENAI)
    assert breach is not None and (breach.metric, breach.used, breach.limit) == ("requests", 2, 2)


def test_soft_then_hard_crossing_reported_once(stores: list[BudgetStore], clock: FakeClock) -> None:
    store = make_store(stores, one_budget("run", "{input_tokens: 100}", extra=("soft: 0.5",)), clock)
    assert store.record(**OPENAI, usage=Usage(input_tokens=40)) == []
    soft = store.record(**OPENAI, usage=Usage(input_tokens=20))
    assert [(b.metric, b.hard, b.limit, b.used) for b in soft] == [("input_tokens", False, 50, 60)]
    assert store.record(**OPENAI, usage=Usage(input_tokens=10)) == []
    hard = store.record(**OPENAI, usage=Usage(input_tokens=30))
    assert [(b.metric, b.hard, b.limit, b.used) for b in hard] == [("input_tokens", True, 100, 100)]
    assert store.record(**OPENAI, usage=Usage(input_tokens=5)) == []
    assert hard[0].resets_at is None and hard[0].retry_after is None


def test_one_call_crossing_both_thresholds_reports_soft_then_hard(
    stores: list[BudgetStore], clock: FakeClock
) -> None:
    store = make_store(stores, one_budget("day", "{cost_usd: 1.0}"), clock)
    crossed = store.record(**OPENAI, usage=Usage(cost_usd=2.5))
    assert [(b.hard, b.limit, b.used) for b in crossed] == [(False, 0.8, 2.5), (True, 1.0, 2.5)]


def test_request_thresholds_are_reported_by_reserve(stores: list[BudgetStore], clock: FakeClock) -> None:
    store = make_store(stores, one_budget("run", "{requests: 4}", extra=("soft: 0.5",)), clock)
    reports = [store.reserve_request(**OPENAI) for _ in range(5)]
    crossings = [[(b.hard, b.used) for b in report] for report in reports]
    assert crossings == [[], [(False, 2)], [], [(True, 4)], []]


def test_soft_fraction_one_only_reports_the_hard_limit(stores: list[BudgetStore], clock: FakeClock) -> None:
    store = make_store(stores, one_budget("run", "{tool_calls: 2}", extra=("soft: 1",)), clock)
    assert [b.hard for b in store.record(**OPENAI, usage=Usage(tool_calls=2))] == [True]


def test_scope_matching(stores: list[BudgetStore], clock: FakeClock) -> None:
    specs = budgets("""\
        budgets:
          - id: openai-4o
            window: run
            scope: {host: api.openai.com, provider: openai, model: "gpt-4o*"}
            limits: {requests: 1}
          - id: any-subdomain
            window: run
            scope: {host: "*.example.com"}
            limits: {requests: 1}
          - id: anthropic
            window: run
            scope: {provider: [anthropic, anthropic_compatible]}
            limits: {requests: 1}
        """)
    store = make_store(stores, specs, clock)
    store.reserve_request(host="API.OpenAI.com", provider="openai", model="GPT-4o-2024-08-06")
    assert store.check(host="api.openai.com", provider="openai", model="gpt-4o").budget == "openai-4o"
    assert store.check(host="api.openai.com", provider="openai", model="gpt-4.1") is None
    assert store.check(host="api.openai.com", provider="openai", model=None) is None
    assert store.check(host="other.com", provider="openai", model="gpt-4o") is None
    store.reserve_request(host="llm.example.com", provider=None, model=None)
    assert store.check(host="a.llm.example.com", provider=None, model=None).budget == "any-subdomain"
    assert store.check(host="example.com", provider=None, model=None) is None
    assert store.check(host="x.org", provider="anthropic_compatible", model="m") is None
    store.reserve_request(host="x.org", provider="anthropic_compatible", model="m")
    assert store.check(host="api.anthropic.com", provider="anthropic", model="claude").budget == "anthropic"
    assert store.check(host="x.org", provider=None, model="m") is None


def test_rolling_minute_window_expiry_is_exact(stores: list[BudgetStore], clock: FakeClock) -> None:
    store = make_store(stores, one_budget("minute", "{requests: 2}"), clock)
    clock.advance(0.2)
    store.reserve_request(**OPENAI)  # bucket T0 (1 s buckets): counted until T0 + 1 + 60
    clock.advance(10.3)
    store.reserve_request(**OPENAI)  # bucket T0 + 10: counted until T0 + 71
    breach = store.check(**OPENAI)
    assert breach is not None
    assert breach.resets_at == T0 + 61
    assert breach.retry_after == math.ceil(T0 + 61 - (T0 + 10.5)) == 51
    clock.now = T0 + 60.99
    assert store.check(**OPENAI) is not None
    clock.now = T0 + 61
    assert store.check(**OPENAI) is None
    assert store.reserve_request(**OPENAI) != []  # back at the limit: reported again in the new window
    breach = store.check(**OPENAI)
    assert breach is not None and breach.resets_at == T0 + 71 and breach.retry_after == 10


def test_rolling_day_window_uses_minute_buckets(stores: list[BudgetStore], clock: FakeClock) -> None:
    store = make_store(stores, one_budget("day", "{output_tokens: 100}"), clock)
    clock.advance(30)
    store.record(**OPENAI, usage=Usage(output_tokens=70))
    clock.advance(3600)
    store.record(**OPENAI, usage=Usage(output_tokens=40))
    breach = store.check(**OPENAI)
    assert breach is not None
    # Usage drops below the limit when the first call's bucket (T0 .. T0+60) leaves the day window.
    assert breach.resets_at == T0 + 60 + 86400
    assert breach.retry_after == 86400 + 60 - 3630
    assert breach.to_json()["resets_at"] == "2023-11-15T22:15:00Z"
    clock.now = T0 + 60 + 86400
    assert store.check(**OPENAI) is None


def test_check_returns_the_longest_lasting_breach(stores: list[BudgetStore], clock: FakeClock) -> None:
    specs = budgets("""\
        budgets:
          - {id: per-minute, window: minute, limits: {requests: 1}}
          - {id: per-run, window: run, limits: {requests: 1}}
          - {id: per-hour, window: hour, limits: {requests: 1}}
        """)
    store = make_store(stores, specs, clock)
    store.reserve_request(**OPENAI)
    assert store.check(**OPENAI).budget == "per-run"
    store2 = make_store(stores, (specs[0], specs[2]), clock)
    store2.reserve_request(**OPENAI)
    assert store2.check(**OPENAI).budget == "per-hour"


def test_crosses_hard_only_for_cut_stream_budgets(stores: list[BudgetStore], clock: FakeClock) -> None:
    specs = budgets("""\
        budgets:
          - id: cut
            window: hour
            scope: {host: api.openai.com}
            limits: {output_tokens: 100, requests: 1}
            on_exceed: cut_stream
          - {id: block, window: hour, limits: {output_tokens: 10}}
        """)
    store = make_store(stores, specs, clock)
    store.reserve_request(**OPENAI)
    store.record(**OPENAI, usage=Usage(output_tokens=80))
    # The block budget is already over its limit and the request count is at its limit; neither cuts.
    assert store.crosses_hard(**OPENAI, partial=Usage(output_tokens=19)) is None
    breach = store.crosses_hard(**OPENAI, partial=Usage(output_tokens=20))
    assert breach is not None
    assert (breach.budget, breach.metric, breach.used) == ("cut", "output_tokens", 100)
    assert breach.on_exceed == "cut_stream"
    other = {"host": "other.host", "provider": None, "model": None}
    assert store.crosses_hard(**other, partial=Usage(output_tokens=500)) is None
    # crosses_hard does not record anything.
    assert store.check(**OPENAI).budget in ("cut", "block")
    assert store.snapshot()[0]["metrics"]["output_tokens"]["used"] == 80


def test_wall_seconds(stores: list[BudgetStore], clock: FakeClock) -> None:
    specs = one_budget("run", "{wall_seconds: 100}", extra=("soft: 0.5", "on_exceed: cut_stream"))
    store = make_store(stores, specs, clock, run_started=T0)
    clock.advance(49)
    assert store.reserve_request(**OPENAI) == []
    clock.advance(1)
    crossed = store.reserve_request(**OPENAI)
    assert [(b.metric, b.hard, b.used) for b in crossed] == [("wall_seconds", False, 50)]
    assert store.reserve_request(**OPENAI) == []
    clock.advance(49.5)
    assert store.check(**OPENAI) is None
    assert store.crosses_hard(**OPENAI, partial=Usage()) is None
    clock.advance(0.5)
    breach = store.check(**OPENAI)
    assert breach is not None and (breach.metric, breach.limit, breach.used) == ("wall_seconds", 100, 100)
    assert store.crosses_hard(**OPENAI, partial=Usage()) is not None
    assert [b.hard for b in store.record(**OPENAI, usage=Usage(output_tokens=1))] == [True]
    assert store.record(**OPENAI, usage=Usage(output_tokens=1)) == []


def test_breach_json_is_the_429_budget_object() -> None:
    breach = BudgetBreach(
        budget="openai-daily",
        metric="cost_usd",
        limit=10.0,
        used=10.25,
        window="day",
        resets_at=0.0,
        retry_after=42,
        hard=True,
        on_exceed="block",
    )
    assert breach.to_json() == {
        "id": "openai-daily",
        "metric": "cost_usd",
        "limit": 10.0,
        "used": 10.25,
        "window": "day",
        "resets_at": "1970-01-01T00:00:00Z",
        "retry_after": 42,
        "hard": True,
        "on_exceed": "block",
    }
    run_breach = BudgetBreach(
        budget="r",
        metric="requests",
        limit=1,
        used=1,
        window="run",
        resets_at=None,
        retry_after=None,
        hard=True,
        on_exceed="block",
    )
    assert run_breach.to_json()["resets_at"] is None


PERSISTED = """\
    budgets:
      - {id: daily, window: day, limits: {input_tokens: 100, requests: 10}}
      - {id: hourly, window: hour, limits: {input_tokens: 100}}
      - {id: per-run, window: run, limits: {input_tokens: 100, cost_usd: 1.0}}
    """


def used(store: BudgetStore, budget: str, metric: str) -> float:
    for entry in store.snapshot():
        if entry["budget"] == budget:
            return entry["metrics"][metric]["used"]
    raise AssertionError(budget)


def test_restart_keeps_day_usage_and_new_run_resets_run_budgets(
    tmp_path: Path, stores: list[BudgetStore], clock: FakeClock
) -> None:
    path = tmp_path / "state" / "budgets.sqlite"
    specs = budgets(PERSISTED)
    first = make_store(stores, specs, clock, path=path, run_id="run-1")
    first.reserve_request(**OPENAI)
    first.record(**OPENAI, usage=Usage(input_tokens=60, cost_usd=0.25))
    first.close()

    clock.advance(1800)
    same_run = make_store(stores, specs, clock, path=path, run_id="run-1")
    assert [used(same_run, b, "input_tokens") for b in ("daily", "hourly", "per-run")] == [60, 60, 60]
    assert used(same_run, "daily", "requests") == 1
    assert used(same_run, "per-run", "cost_usd") == 0.25
    same_run.record(**OPENAI, usage=Usage(input_tokens=40))
    assert same_run.check(**OPENAI).budget in ("daily", "hourly", "per-run")
    same_run.close()

    clock.advance(3600)  # the first call has left the hour window (the second has not); the day holds both
    new_run = make_store(stores, specs, clock, path=path, run_id="run-2")
    assert [used(new_run, b, "input_tokens") for b in ("daily", "hourly", "per-run")] == [100, 40, 0]
    breach = new_run.check(**OPENAI)
    assert breach is not None and breach.budget == "daily"
    assert breach.resets_at == T0 + 60 + 86400


def test_background_writer_persists_without_close(tmp_path: Path) -> None:
    path = tmp_path / "budgets.sqlite"
    store = BudgetStore(path, budgets(PERSISTED), run_id="r", run_started=time.time(), flush_interval=0.01)
    try:
        store.record(**OPENAI, usage=Usage(input_tokens=7))
        deadline = time.monotonic() + 5
        rows: list[tuple[str, int]] = []
        while time.monotonic() < deadline:
            with sqlite3.connect(path) as reader:
                rows = reader.execute("SELECT budget, input_tokens FROM run_usage").fetchall()
            if rows:
                break
            time.sleep(0.02)
        assert rows == [("per-run", 7)]
    finally:
        store.close()


def test_state_file_is_private(tmp_path: Path, stores: list[BudgetStore], clock: FakeClock) -> None:
    path = tmp_path / "home" / "budgets.sqlite"
    store = make_store(stores, budgets(PERSISTED), clock, path=path)
    store.record(**OPENAI, usage=Usage(input_tokens=1))
    store.flush()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    created = [p for p in path.parent.iterdir() if p.name.startswith("budgets.sqlite")]
    assert path in created and len(created) >= 2  # the database plus its WAL files
    for file in created:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    with sqlite3.connect(path) as reader:
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_memory_and_state_file_stay_bounded(
    tmp_path: Path, stores: list[BudgetStore], clock: FakeClock
) -> None:
    specs = budgets("""\
        budgets:
          - {id: m, window: minute, limits: {requests: 100000000}}
          - {id: d, window: day, limits: {requests: 100000000}}
        """)
    path = tmp_path / "budgets.sqlite"
    store = make_store(stores, specs, clock, path=path)
    peak = 0
    for _ in range(3 * 24 * 60 * 4):  # three days, one call every 15 s
        store.reserve_request(**OPENAI)
        clock.advance(15)
        peak = max(peak, store.tracked_buckets())
        if clock.now % 600 == 0:
            store.flush()
    assert 1440 <= peak <= 1441 + 5  # a day of one-minute buckets plus the minute window's few
    for _ in range(4 * 300):  # five busy minutes, four calls a second
        store.reserve_request(**OPENAI)
        clock.advance(0.25)
        peak = max(peak, store.tracked_buckets())
    assert peak <= 1441 + 62  # minute window: at most 61 one-second buckets, +1 at a boundary
    assert used(store, "m", "requests") == 4 * 60  # now is on a bucket boundary: 60 whole seconds held
    store.flush()
    with sqlite3.connect(path) as reader:
        rows = dict(reader.execute("SELECT budget, count(*) FROM rolling_usage GROUP BY budget").fetchall())
    assert 1440 <= rows["d"] <= 1442 and 60 <= rows["m"] <= 62


def test_in_memory_store_has_no_file(stores: list[BudgetStore], clock: FakeClock) -> None:
    store = make_store(stores, budgets(PERSISTED), clock, path=None)
    store.record(**OPENAI, usage=Usage(input_tokens=5))
    store.flush()
    assert used(store, "daily", "input_tokens") == 5
    snapshot = {entry["budget"]: entry for entry in store.snapshot()}
    assert snapshot["per-run"]["run_id"] == "run-1" and snapshot["daily"]["run_id"] is None
    assert snapshot["daily"]["metrics"]["input_tokens"]["next_expiry"] == T0 + 60 + 86400
    assert snapshot["daily"]["metrics"]["input_tokens"]["blocked_until"] is None


def test_a_released_reservation_leaves_the_bucket_it_went_into(
    stores: list[BudgetStore], clock: FakeClock
) -> None:
    """A request served from a tape is taken back from the bucket it was counted in, so the window
    never reads below the truth when that bucket expires."""
    store = make_store(stores, one_budget("minute", "{requests: 2}"), clock)
    first = store.now()
    store.reserve_request(**OPENAI, now=first)  # counted, then answered from a tape
    store.reserve_request(**OPENAI)  # a live one, same bucket
    clock.advance(45)  # the release comes in a later bucket
    store.release_request(**OPENAI, reserved_at=first)
    store.reserve_request(**OPENAI)  # live, in the later bucket
    assert store.check(**OPENAI) is not None, "two live requests in the window"
    clock.advance(30)  # the first bucket has left the window; the later one has not
    assert store.check(**OPENAI) is None
    store.reserve_request(**OPENAI)
    breach = store.check(**OPENAI)
    assert breach is not None and breach.used == 2, "not one below the truth"


def test_releasing_after_the_bucket_expired_takes_nothing(
    stores: list[BudgetStore], clock: FakeClock
) -> None:
    store = make_store(stores, one_budget("minute", "{requests: 1}"), clock)
    at = store.now()
    store.reserve_request(**OPENAI, now=at)
    clock.advance(600)
    store.release_request(**OPENAI, reserved_at=at)
    store.reserve_request(**OPENAI)
    breach = store.check(**OPENAI)
    assert breach is not None and breach.used == 1


@pytest.mark.parametrize("reserve_over_limit", [False, True])
def test_admit_is_check_then_reserve(stores, reserve_over_limit: bool) -> None:
    """`admit` (one scope match, one lock) answers what `check` followed by `reserve_request` did, over
    a run of requests and recorded usage that crosses soft and hard limits and rolls windows over."""
    import random

    specs = budgets(
        """
        budgets:
          - id: minute
            window: minute
            limits: {requests: 7, total_tokens: 900}
          - id: run
            window: run
            soft: 0.5
            limits: {requests: 30}
          - id: openai-day
            window: day
            scope: {provider: openai}
            limits: {requests: 12, cost_usd: 0.05}
        """
    )
    rng = random.Random(7)
    one_clock, two_clock = FakeClock(), FakeClock()
    one, two = make_store(stores, specs, one_clock), make_store(stores, specs, two_clock)
    callers = [OPENAI, {"host": "api.anthropic.com", "provider": "anthropic", "model": "claude"}]
    seen_breach = seen_crossing = 0
    for _ in range(400):
        caller = rng.choice(callers)
        step = rng.choice([0.0, 0.5, 3.0, 20.0])
        one_clock.advance(step)
        two_clock.advance(step)
        breach, reserved_at, crossed = one.admit(**caller, reserve_over_limit=reserve_over_limit)
        expected = two.check(**caller)
        assert breach == expected
        seen_breach += expected is not None
        if expected is not None and not reserve_over_limit:
            assert (reserved_at, crossed) == (None, [])
            continue
        assert reserved_at == two_clock.now
        assert crossed == two.reserve_request(**caller, now=two.now())
        seen_crossing += bool(crossed)
        if rng.random() < 0.5:
            usage = Usage(total_tokens=rng.randint(0, 200), cost_usd=rng.random() / 100)
            assert one.record(**caller, usage=usage) == two.record(**caller, usage=usage)
        assert one.snapshot() == two.snapshot()
    assert seen_breach > 20 and seen_crossing > 0
