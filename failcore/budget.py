"""Budget accounting: how much each policy budget has used, and whether the next request may go out.

The in-memory state is authoritative; `check`, `reserve_request`, `record` and `crosses_hard` run on the
proxy's event loop, touch only the budgets whose scope matches the call, never do disk I/O and hold one
lock for a few dictionary updates. A background thread persists the changes to SQLite in batches, so a
restart in the middle of a day does not reset a day budget.

Windows:

* ``run`` counts from zero for each run id (`failcore run`, or one proxy process).
* ``minute``, ``hour``, ``day`` are rolling windows. Usage is kept in time buckets (1 s for minute,
  10 s for hour, 60 s for day) so memory per budget is bounded by window / bucket. A bucket starting at
  ``s`` is counted until ``s + bucket + window``: usage is held for at least the whole window and at most
  one bucket longer, so a rolling limit is never exceeded because of bucketing.

Overshoot bound: a request is let through while the budget is below its limits, and the tokens, cost and
tool calls of a call are known only when it finishes. Concurrent requests admitted before the limit was
reached can therefore overshoot a token / cost / tool-call limit by at most what those in-flight requests
consume (``cut_stream`` budgets bound a streaming response further by cutting it at the limit). The
request count itself never overshoots: `reserve_request` counts a request when it is admitted.

Each process keeps its own view; several processes sharing one state file add their usage to the file
(deltas, not totals), so each sees the others' usage after its next start.

Size: ~720 lines because the windows, the in-memory state, the store's lock and the batched SQLite
writer share one invariant (what is counted in memory is what reaches the file, exactly once); the
policy types it needs come from `failcore.policy.model` alone.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from failcore.paths import ensure_private_dir
from failcore.policy.model import BudgetSpec

if TYPE_CHECKING:
    import sqlite3  # imported where the state database opens: a policy without budgets never does

# The order of the internal usage vectors; cost is kept in integer nano-dollars so sums never drift.
USAGE_METRICS: tuple[str, ...] = (
    "requests",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cost_usd",
    "tool_calls",
)
WALL_SECONDS = "wall_seconds"
_COST_INDEX = USAGE_METRICS.index("cost_usd")
_REQUESTS_INDEX = USAGE_METRICS.index("requests")
_NANOS_PER_USD = 1_000_000_000
BUCKET_SECONDS: dict[int, int] = {60: 1, 3600: 10, 86400: 60}
RUN_ROW_RETENTION_SECONDS = 7 * 86400
DEFAULT_FLUSH_INTERVAL = 0.5
_PRUNE_INTERVAL_SECONDS = 60.0
_SCHEMA_VERSION = 1

Vector = list[int]


@dataclass(frozen=True, slots=True)
class Usage:
    """What one call consumed. `requests` is normally 0 in `record`, since `reserve_request` counted it."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    tool_calls: int = 0

    def vector(self) -> Vector:
        return [
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.total_tokens,
            round(self.cost_usd * _NANOS_PER_USD),
            self.tool_calls,
        ]


# What admitting one request adds (read only, never mutated).
_ONE_REQUEST: Vector = Usage(requests=1).vector()


def _nonzero(vector: Vector) -> tuple[tuple[int, int], ...]:
    """The (index, value) of a usage vector's metrics that change (adding 0 to a total changes nothing)."""
    return tuple((index, value) for index, value in enumerate(vector) if value)


_ONE_REQUEST_ITEMS = _nonzero(_ONE_REQUEST)


@dataclass(frozen=True, slots=True)
class BudgetBreach:
    """A limit reached (`hard`) or a soft threshold crossed; `limit` is the threshold that was crossed.

    `resets_at` (epoch seconds) and `retry_after` (whole seconds from now) say when usage falls back below
    that threshold; both are None for run windows, which never reset within the run.
    """

    budget: str
    metric: str
    limit: float
    used: float
    window: str
    resets_at: float | None
    retry_after: int | None
    hard: bool
    on_exceed: str

    def to_json(self) -> dict[str, object]:
        resets_at = None
        if self.resets_at is not None:
            moment = datetime.fromtimestamp(self.resets_at, UTC)
            resets_at = moment.isoformat(timespec="seconds").replace("+00:00", "Z")
        return {
            "id": self.budget,
            "metric": self.metric,
            "limit": self.limit,
            "used": self.used,
            "window": self.window,
            "resets_at": resets_at,
            "retry_after": self.retry_after,
            "hard": self.hard,
            "on_exceed": self.on_exceed,
        }


class _Bucket:
    __slots__ = ("start", "values")

    def __init__(self, start: int, values: Vector) -> None:
        self.start = start
        self.values = values


def _display(index: int, value: float) -> float:
    return value / _NANOS_PER_USD if index == _COST_INDEX else value


def _internal_limit(metric: str, limit: float) -> float:
    return round(limit * _NANOS_PER_USD) if metric == "cost_usd" else limit


class _BudgetState:
    """Usage of one budget in its current window; every method expects the store's lock to be held."""

    def __init__(self, spec: BudgetSpec) -> None:
        self.spec = spec
        self.window = spec.window_seconds
        self.bucket_seconds = BUCKET_SECONDS[self.window] if self.window is not None else 0
        self.totals: Vector = [0] * len(USAGE_METRICS)
        self.buckets: deque[_Bucket] = deque()
        # (index into the usage vector, limit in internal units, limit as written) per usage metric.
        self.limits = [
            (USAGE_METRICS.index(metric), _internal_limit(metric, limit), limit)
            for metric, limit in spec.limits.items()
            if metric != WALL_SECONDS
        ]
        self.wall_limit = spec.limits.get(WALL_SECONDS)
        self.wall_seen = 0.0
        self.rolling = self.window is not None
        # How long a rolling bucket stays counted after it starts (0 for a run window: never expires).
        self.hold = self.window + self.bucket_seconds if self.window is not None else 0

    def expiry(self, bucket: _Bucket) -> float:
        return bucket.start + self.hold

    def expire(self, now: float) -> None:
        hold = self.hold
        while self.buckets and self.buckets[0].start + hold <= now:
            old = self.buckets.popleft()
            for index, value in enumerate(old.values):
                self.totals[index] -= value

    def add(self, now: float, vector: Vector, items: tuple[tuple[int, int], ...] | None = None) -> int | None:
        """Add usage; returns the bucket start it went into (None for run windows). `items`:
        `_nonzero(vector)`, when the caller has it."""
        items = _nonzero(vector) if items is None else items
        totals = self.totals
        for index, value in items:
            totals[index] += value
        if not self.rolling:
            return None
        start = int(now // self.bucket_seconds) * self.bucket_seconds
        if self.buckets and self.buckets[-1].start >= start:
            # Same bucket, or the clock stepped back: the newest bucket expires last, so it is the safe home.
            newest = self.buckets[-1].values
            for index, value in items:
                newest[index] += value
            return self.buckets[-1].start
        self.buckets.append(_Bucket(start, list(vector)))
        return start

    def take_back(self, at: float, vector: Vector) -> tuple[bool, int | None]:
        """Undo an `add(at, -vector)` if its bucket is still in the window: (done, bucket start)."""
        if not self.rolling:
            for index, value in enumerate(vector):
                self.totals[index] += value
            return True, None
        start = int(at // self.bucket_seconds) * self.bucket_seconds
        for bucket in self.buckets:
            if bucket.start == start:
                for index, value in enumerate(vector):
                    bucket.values[index] += value
                    self.totals[index] += value
                return True, start
        return False, None

    def release_time(self, index: int, threshold: float) -> float | None:
        """When usage of one metric falls below `threshold` through expiry (None: run window, or never)."""
        if not self.rolling:
            return None
        remaining = self.totals[index]
        for bucket in self.buckets:
            remaining -= bucket.values[index]
            if remaining < threshold:
                return self.expiry(bucket)
        return None

    def breach(
        self, index: int, threshold: float, limit: float, used: float, now: float, *, hard: bool
    ) -> BudgetBreach:
        resets_at = self.release_time(index, threshold)
        return self._breach(USAGE_METRICS[index], limit, _display(index, used), resets_at, now, hard=hard)

    def wall_breach(self, used: float, limit: float, *, hard: bool) -> BudgetBreach:
        return self._breach(WALL_SECONDS, limit, used, None, 0.0, hard=hard)

    def _breach(
        self, metric: str, limit: float, used: float, resets_at: float | None, now: float, *, hard: bool
    ) -> BudgetBreach:
        retry_after = max(1, math.ceil(resets_at - now)) if resets_at is not None else None
        return BudgetBreach(
            budget=self.spec.id,
            metric=metric,
            limit=limit,
            used=used,
            window=self.spec.window,
            resets_at=resets_at,
            retry_after=retry_after,
            hard=hard,
            on_exceed=self.spec.on_exceed,
        )

    def hard_breaches(self, now: float, elapsed: float, extra: Vector | None = None) -> list[BudgetBreach]:
        breaches = []
        for index, internal, limit in self.limits:
            if extra is not None and index == _REQUESTS_INDEX:
                continue  # the in-flight request was already counted when it was admitted
            used = self.totals[index] + (extra[index] if extra is not None else 0)
            if used >= internal:
                breaches.append(self.breach(index, internal, limit, used, now, hard=True))
        if self.wall_limit is not None and elapsed >= self.wall_limit:
            breaches.append(self.wall_breach(elapsed, self.wall_limit, hard=True))
        return breaches

    def crossings(self, before: Vector, now: float) -> list[BudgetBreach]:
        crossed = []
        for index, internal, limit in self.limits:
            old, new = before[index], self.totals[index]
            soft = self.spec.soft * internal
            if self.spec.soft < 1 and old < soft <= new:
                crossed.append(self.breach(index, soft, self.spec.soft * limit, new, now, hard=False))
            if old < internal <= new:
                crossed.append(self.breach(index, internal, limit, new, now, hard=True))
        return crossed

    def wall_crossings(self, elapsed: float) -> list[BudgetBreach]:
        if self.wall_limit is None:
            return []
        old, self.wall_seen = self.wall_seen, max(self.wall_seen, elapsed)
        crossed = []
        soft = self.spec.soft * self.wall_limit
        if self.spec.soft < 1 and old < soft <= elapsed:
            crossed.append(self.wall_breach(elapsed, soft, hard=False))
        if old < self.wall_limit <= elapsed:
            crossed.append(self.wall_breach(elapsed, self.wall_limit, hard=True))
        return crossed


def _most_binding(breaches: list[BudgetBreach]) -> BudgetBreach | None:
    """The breach that lasts longest: a run window (never resets) before the latest rolling reset."""
    if not breaches:
        return None
    return max(breaches, key=lambda breach: math.inf if breach.resets_at is None else breach.resets_at)


class BudgetStore:
    """Authoritative budget usage in memory, persisted to SQLite by a background thread.

    `path` None keeps everything in memory (nothing survives a restart). Construction reads the state file
    (do it before serving traffic); `close` writes what is pending and stops the writer.
    """

    def __init__(
        self,
        path: Path | None,
        budgets: Sequence[BudgetSpec],
        *,
        run_id: str,
        run_started: float,
        clock: Callable[[], float] = time.time,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    ) -> None:
        self._clock = clock
        self._run_id = run_id
        self._run_started = run_started
        self._lock = threading.Lock()
        self._states = [_BudgetState(spec) for spec in budgets]
        self._longest_hold = max((state.hold for state in self._states if state.rolling), default=0)
        self._pending_rolling: dict[tuple[str, int], Vector] = {}
        self._pending_run: dict[str, Vector] = {}
        self.persist_error: str | None = None
        self._writer: _StateWriter | None = None
        if path is not None:
            self._writer = _StateWriter(path, self, flush_interval)
            self._load(self._writer.connection)
            self._writer.start()

    # -- hot path (event loop) ------------------------------------------------------------------------

    def check(self, *, host: str, provider: str | None, model: str | None) -> BudgetBreach | None:
        """The hard limit that forbids sending this request now, or None when every budget in scope allows it.

        Blocked when a count/token/cost is already at its limit (for requests: when one more request would
        exceed it) or a run has lasted its wall_seconds.
        """
        states = self._in_scope(host, provider, model)
        if not states:
            return None
        now = self._clock()
        with self._lock:
            return _most_binding(self._hard_breaches(states, now))

    def check_metrics(
        self, *, host: str, provider: str | None, model: str | None, metrics: frozenset[str]
    ) -> BudgetBreach | None:
        """`check` for the hard limits of `metrics` only (a realtime session's message is no new request)."""
        states = self._in_scope(host, provider, model)
        if not states:
            return None
        now = self._clock()
        with self._lock:
            return _most_binding([b for b in self._hard_breaches(states, now) if b.metric in metrics])

    def now(self) -> float:
        return self._clock()

    def _hard_breaches(self, states: list[_BudgetState], now: float) -> list[BudgetBreach]:
        """The hard limits `states` are at, their windows expired to `now` (call with the lock held)."""
        elapsed = now - self._run_started
        breaches: list[BudgetBreach] = []
        for state in states:
            state.expire(now)
            breaches.extend(state.hard_breaches(now, elapsed))
        return breaches

    def admit(
        self, *, host: str, provider: str | None, model: str | None, reserve_over_limit: bool
    ) -> tuple[BudgetBreach | None, float | None, list[BudgetBreach]]:
        """`check`, then `reserve_request` at the same moment, with one scope match and one lock:
        (the hard limit that forbids this request or None, when it was reserved or None, the thresholds
        the reservation crossed). Over a hard limit the request is reserved only if
        `reserve_over_limit` (observe mode lets it go and counts it)."""
        states = self._in_scope(host, provider, model)
        now = self._clock()
        if not states:
            return None, now, []
        with self._lock:
            breach = _most_binding(self._hard_breaches(states, now))
            if breach is not None and not reserve_over_limit:
                return breach, None, []
            crossed = self._add_locked(states, now, now - self._run_started, _ONE_REQUEST)
        self._wake_writer()
        return breach, now, crossed

    def reserve_request(
        self, *, host: str, provider: str | None, model: str | None, now: float | None = None
    ) -> list[BudgetBreach]:
        """Count an admitted request at once, so concurrent requests see it; returns thresholds it crossed.
        `now` (from `now()`) is what `release_request` needs to find the reservation again."""
        return self._add(host, provider, model, Usage(requests=1).vector(), now)

    def release_request(
        self, *, host: str, provider: str | None, model: str | None, reserved_at: float
    ) -> None:
        """Take back a reservation for a request that turned out to cost nothing (served from a tape):
        from the bucket it went into, or not at all if that bucket has already left the window."""
        vector = Usage(requests=-1).vector()
        now = self._clock()
        with self._lock:
            for state in self._in_scope(host, provider, model):
                state.expire(now)
                taken, bucket = state.take_back(reserved_at, vector)
                if taken and self._writer is not None:
                    self._queue_delta(state, bucket, vector)

    def record(
        self, *, host: str, provider: str | None, model: str | None, usage: Usage
    ) -> list[BudgetBreach]:
        """Add a finished call's usage; returns the soft and hard thresholds newly crossed by it.

        A threshold is reported when usage goes from below it to at or above it, so once per run for run
        windows, and again in a rolling window only after expiry has brought usage back below it. One call
        crossing both thresholds of a metric reports both, soft first.
        """
        return self._add(host, provider, model, usage.vector())

    def crosses_hard(
        self, *, host: str, provider: str | None, model: str | None, partial: Usage
    ) -> BudgetBreach | None:
        """For `cut_stream` budgets in scope: would this in-flight (unrecorded) usage hit a hard limit?"""
        in_scope = self._in_scope(host, provider, model)
        states = [state for state in in_scope if state.spec.on_exceed == "cut_stream"]
        if not states:
            return None
        now = self._clock()
        elapsed = now - self._run_started
        extra = partial.vector()
        breaches: list[BudgetBreach] = []
        with self._lock:
            for state in states:
                state.expire(now)
                breaches.extend(state.hard_breaches(now, elapsed, extra))
        return _most_binding(breaches)

    def _in_scope(self, host: str, provider: str | None, model: str | None) -> list[_BudgetState]:
        return [
            state
            for state in self._states
            if state.spec.scope.matches(host=host, provider=provider, model=model)
        ]

    def _add(
        self, host: str, provider: str | None, model: str | None, vector: Vector, now: float | None = None
    ) -> list[BudgetBreach]:
        states = self._in_scope(host, provider, model)
        if not states:
            return []
        now = self._clock() if now is None else now
        elapsed = now - self._run_started
        with self._lock:
            crossed = self._add_locked(states, now, elapsed, vector)
        self._wake_writer()
        return crossed

    def _add_locked(
        self, states: list[_BudgetState], now: float, elapsed: float, vector: Vector
    ) -> list[BudgetBreach]:
        crossed: list[BudgetBreach] = []
        items = _ONE_REQUEST_ITEMS if vector is _ONE_REQUEST else _nonzero(vector)
        for state in states:
            state.expire(now)
            before = list(state.totals)
            bucket = state.add(now, vector, items)
            crossed.extend(state.crossings(before, now))
            crossed.extend(state.wall_crossings(elapsed))
            if self._writer is not None:
                self._queue_delta(state, bucket, vector, items)
        return crossed

    def _wake_writer(self) -> None:
        if self._writer is not None:
            self._writer.wake_if_backlogged(len(self._pending_rolling) + len(self._pending_run))

    def _queue_delta(
        self,
        state: _BudgetState,
        bucket: int | None,
        vector: Vector,
        items: tuple[tuple[int, int], ...] | None = None,
    ) -> None:
        if bucket is None:
            pending = self._pending_run.setdefault(state.spec.id, [0] * len(USAGE_METRICS))
        else:
            pending = self._pending_rolling.setdefault((state.spec.id, bucket), [0] * len(USAGE_METRICS))
        for index, value in _nonzero(vector) if items is None else items:
            pending[index] += value

    # -- inspection ---------------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, object]]:
        """Per budget: window, and per limited metric the usage, the limit and when it next decreases."""
        now = self._clock()
        elapsed = now - self._run_started
        result: list[dict[str, object]] = []
        with self._lock:
            for state in self._states:
                state.expire(now)
                metrics: dict[str, dict[str, object]] = {}
                for index, internal, limit in state.limits:
                    used = state.totals[index]
                    blocked_until = state.release_time(index, internal) if used >= internal else None
                    metrics[USAGE_METRICS[index]] = {
                        "used": _display(index, used),
                        "limit": limit,
                        "soft_at": state.spec.soft * limit,
                        "next_expiry": self._next_expiry(state, index),
                        "blocked_until": blocked_until,
                    }
                if state.wall_limit is not None:
                    metrics[WALL_SECONDS] = {
                        "used": elapsed,
                        "limit": state.wall_limit,
                        "soft_at": state.spec.soft * state.wall_limit,
                        "next_expiry": None,
                        "blocked_until": None,
                    }
                result.append(
                    {
                        "budget": state.spec.id,
                        "window": state.spec.window,
                        "window_seconds": state.window,
                        "on_exceed": state.spec.on_exceed,
                        "run_id": None if state.rolling else self._run_id,
                        "metrics": metrics,
                    }
                )
        return result

    @staticmethod
    def _next_expiry(state: _BudgetState, index: int) -> float | None:
        for bucket in state.buckets:
            if bucket.values[index]:
                return state.expiry(bucket)
        return None

    def tracked_buckets(self) -> int:
        """How many rolling-window buckets are held in memory (bounded by window / bucket per budget)."""
        with self._lock:
            return sum(len(state.buckets) for state in self._states)

    def flush(self) -> None:
        """Write pending changes now (blocking; for shutdown paths and tests, not the event loop)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.stop()
            self._writer = None

    # -- persistence --------------------------------------------------------------------------------

    def _take_pending(self) -> tuple[dict[tuple[str, int], Vector], dict[str, Vector]]:
        with self._lock:
            rolling, run = self._pending_rolling, self._pending_run
            self._pending_rolling, self._pending_run = {}, {}
        return rolling, run

    def _restore_pending(self, rolling: dict[tuple[str, int], Vector], run: dict[str, Vector]) -> None:
        """Put back deltas a failed write could not store; rolling ones already expired are dropped."""
        oldest_kept = self._clock() - self._longest_hold
        with self._lock:
            for key, vector in rolling.items():
                if key[1] >= oldest_kept:
                    _merge(self._pending_rolling.setdefault(key, [0] * len(USAGE_METRICS)), vector)
            for budget, vector in run.items():
                _merge(self._pending_run.setdefault(budget, [0] * len(USAGE_METRICS)), vector)

    def _load(self, connection: sqlite3.Connection) -> None:
        now = self._clock()
        columns = ", ".join(USAGE_METRICS)
        with self._lock:
            rolling = {state.spec.id: state for state in self._states if state.rolling}
            run = {state.spec.id: state for state in self._states if not state.rolling}
            rows = connection.execute(
                f"SELECT budget, bucket, {columns} FROM rolling_usage WHERE bucket >= ? ORDER BY bucket",
                (now - self._longest_hold,),
            )
            for budget, bucket, *values in rows:
                if budget in rolling:
                    rolling[budget].add(bucket, list(values))
            for state in rolling.values():
                state.expire(now)
            rows = connection.execute(
                f"SELECT budget, {columns} FROM run_usage WHERE run_id = ?", (self._run_id,)
            )
            for budget, *values in rows:
                if budget in run:
                    run[budget].add(now, list(values))

    def _write(
        self,
        connection: sqlite3.Connection,
        rolling: dict[tuple[str, int], Vector],
        run: dict[str, Vector],
        now: float,
        *,
        prune: bool,
    ) -> None:
        columns = ", ".join(USAGE_METRICS)
        placeholders = ", ".join("?" for _ in USAGE_METRICS)
        increments = ", ".join(f"{name} = {name} + excluded.{name}" for name in USAGE_METRICS)
        with connection:
            connection.executemany(
                f"INSERT INTO rolling_usage (budget, bucket, {columns}) VALUES (?, ?, {placeholders}) "
                f"ON CONFLICT (budget, bucket) DO UPDATE SET {increments}",
                [(budget, bucket, *vector) for (budget, bucket), vector in rolling.items()],
            )
            connection.executemany(
                f"INSERT INTO run_usage (run_id, budget, updated, {columns}) "
                f"VALUES (?, ?, ?, {placeholders}) "
                f"ON CONFLICT (run_id, budget) DO UPDATE SET updated = excluded.updated, {increments}",
                [(self._run_id, budget, now, *vector) for budget, vector in run.items()],
            )
            if prune:
                # Each budget keeps only its own window; rows of budgets no longer in the policy go last.
                connection.executemany(
                    "DELETE FROM rolling_usage WHERE budget = ? AND bucket < ?",
                    [(state.spec.id, now - state.hold) for state in self._states if state.rolling],
                )
                connection.execute("DELETE FROM rolling_usage WHERE bucket < ?", (now - self._longest_hold,))
                oldest_run = now - RUN_ROW_RETENTION_SECONDS
                connection.execute("DELETE FROM run_usage WHERE updated < ?", (oldest_run,))


def _merge(target: Vector, vector: Vector) -> None:
    for index, value in enumerate(vector):
        target[index] += value


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS rolling_usage (
    budget TEXT NOT NULL, bucket INTEGER NOT NULL,
    {", ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in USAGE_METRICS)},
    PRIMARY KEY (budget, bucket)
);
CREATE INDEX IF NOT EXISTS rolling_usage_bucket ON rolling_usage (bucket);
CREATE TABLE IF NOT EXISTS run_usage (
    run_id TEXT NOT NULL, budget TEXT NOT NULL, updated REAL NOT NULL,
    {", ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in USAGE_METRICS)},
    PRIMARY KEY (run_id, budget)
);
PRAGMA user_version = {_SCHEMA_VERSION};
"""


def open_state_db(path: Path) -> sqlite3.Connection:
    """Open (creating owner-only: dir 0700, file 0600) the budget state database in WAL mode."""
    ensure_private_dir(path.parent)  # and any parent it creates: 0700 whatever the umask
    # Created before SQLite opens it, so the file (and the -wal/-shm files SQLite derives from its mode)
    # is never readable by others.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    import sqlite3

    connection = sqlite3.connect(path, check_same_thread=False, isolation_level="DEFERRED")
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=5000")
    connection.executescript(_SCHEMA)
    return connection


class _StateWriter:
    """Owns the SQLite connection: used once to load at start, then only under its write lock.

    Pending deltas coalesce per (budget, bucket) and per run budget inside the store, so the backlog is
    bounded by the number of distinct keys, however many calls arrive between flushes.
    """

    BACKLOG_WAKE = 1024

    def __init__(self, path: Path, store: BudgetStore, interval: float) -> None:
        self.connection = open_state_db(path)
        self._store = store
        self._interval = interval
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._write_lock = threading.Lock()
        self._last_prune = -math.inf
        self._thread = threading.Thread(target=self._run, name="failcore-budget-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake_if_backlogged(self, backlog: int) -> None:
        if backlog >= self.BACKLOG_WAKE:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self._write_lock:
            rolling, run = self._store._take_pending()
            now = self._store._clock()
            prune = now - self._last_prune >= _PRUNE_INTERVAL_SECONDS
            if not rolling and not run and not prune:
                return
            import sqlite3  # (loaded by open_state_db, which made self.connection)

            try:
                self._store._write(self.connection, rolling, run, now, prune=prune)
            except sqlite3.Error as exc:
                self._store.persist_error = f"budget state not saved: {exc}"
                self._store._restore_pending(rolling, run)
                return
            self._store.persist_error = None
            if prune:
                self._last_prune = now

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self.flush()
        self.connection.close()
