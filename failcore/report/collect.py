"""Reading a run for the report: a RunReport whose every list is bounded by `max_events` while its
counts (runs.RunSummary, the host table, what each list left out) cover the whole run. The counts come
from the run's per-segment aggregates (aggregates.py) and only the lines shown are parsed; `_Collector`
folds those lines, or with `index=False` every event of the run, into the lists.

Size: a little over 500 lines: the report's data model, its collector and the entry point that picks
the cached or the full path; the template-facing model and the collector change together."""

from __future__ import annotations

import datetime as dt
import gc
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from failcore.conversation import Conversation, read_conversation
from failcore.runs import RunSummary, run_events
from failcore.tape.verify import VerifyReport, verify_tape
from failcore.views.runtime import RUNTIME_KINDS

# The page's default bound: a page that opens quickly in a browser and renders in about a fifth of the
# time 5,000 rows a list took (BENCHMARKS.md), whatever the run's size; every list says what it left out.
DEFAULT_MAX_EVENTS: Final = 1000
# Per body shown, and over the whole page, when bodies are included.
BODY_SHOW_CAP: Final = 16 * 1024
BODY_BUDGET: Final = 16 * 1024 * 1024
# Kinds that carry no story of their own: the chain's signatures are summarised by verification.
_HIDDEN_KINDS: Final = frozenset({"checkpoint"})
# The classes of a JSON number as orjson makes them (not bool: the tape's numbers are never booleans).
_NUMBERS: Final = frozenset({int, float})


class ReportError(Exception):
    """The report cannot be made (no tape, unknown run); the message says why."""


# Latencies are summed exactly (as integers scaled by 2**_LATENCY_SCALE, which holds every finite
# double), so a host's mean is the same whether its exchanges were added one by one or as per-segment
# sums (the report's cached aggregates): float addition depends on its order, this does not.
_LATENCY_SCALE: Final = 1100


@dataclass(slots=True)
class HostStats:
    host: str
    requests: int = 0
    blocked: int = 0
    warned: int = 0
    failed: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    latency_count: int = 0
    latency_exact: int = 0  # the sum of the finite latencies, times 2**_LATENCY_SCALE
    latency_special: float = 0.0  # the sum of the others (inf, nan): order-free, like the exact one

    def add_latency(self, value: float) -> None:
        self.latency_count += 1
        if value.__class__ is int:
            self.latency_exact += value << _LATENCY_SCALE
        elif math.isfinite(value):
            numerator, denominator = value.as_integer_ratio()
            self.latency_exact += numerator << (_LATENCY_SCALE + 1 - denominator.bit_length())
        else:
            self.latency_special += value

    def merge(self, other: HostStats) -> None:
        """Add the same host's exchanges from a later part of the run."""
        self.requests += other.requests
        self.blocked += other.blocked
        self.warned += other.warned
        self.failed += other.failed
        self.bytes_out += other.bytes_out
        self.bytes_in += other.bytes_in
        self.latency_count += other.latency_count
        self.latency_exact += other.latency_exact
        self.latency_special += other.latency_special

    @property
    def mean_latency_ms(self) -> float | None:
        if not self.latency_count:
            return None
        if self.latency_special:
            return self.latency_special / self.latency_count
        try:  # int / int is correctly rounded
            return self.latency_exact / (self.latency_count << _LATENCY_SCALE)
        except OverflowError:
            return math.copysign(math.inf, self.latency_exact)


def count_exchange(stats: HostStats, get: Callable[[str], Any]) -> None:
    """Count one network event (its `get`) into its host's row: the collector's and the cached
    aggregates' one definition."""
    stats.requests += 1
    value = get("bytes_out")
    if value.__class__ is int:
        stats.bytes_out += value
    value = get("bytes_in")
    if value.__class__ is int:
        stats.bytes_in += value
    value = get("latency_ms")
    if value.__class__ in _NUMBERS:
        stats.add_latency(value)
    outcome = get("outcome")
    if outcome == "BLOCKED":
        stats.blocked += 1
    elif get("decision") == "WARN":
        stats.warned += 1
    if outcome == "FAIL":
        stats.failed += 1


@dataclass(frozen=True, slots=True)
class LlmCallRow:
    seq: int | None
    ts: float | None
    host: str
    provider: str | None
    api: str | None
    model: str | None
    stream: bool
    usage_known: bool
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    cost_usd: float | None
    cost_reason: str | None
    finish_reason: str | None


@dataclass(slots=True)
class RunReport:
    run: str
    tape: Path
    summary: RunSummary
    verification: VerifyReport
    generated: float
    max_events: int = DEFAULT_MAX_EVENTS
    bodies: bool = False
    events_read: int = 0
    # Events as shown (bodies trimmed or dropped), at most max_events.
    timeline: list[dict[str, Any]] = field(default_factory=list)
    hosts: dict[str, HostStats] = field(default_factory=dict)
    blocked: list[dict[str, Any]] = field(default_factory=list)
    warned: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    dlp_hits: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    llm_calls: list[LlmCallRow] = field(default_factory=list)
    # The runtime's guarded tool calls (kind tool), in tape order; their effects are in the timeline.
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    conversations: dict[int, Conversation] = field(default_factory=dict)
    # What each list left out (section name -> count); the page states every one of them.
    omitted: dict[str, int] = field(default_factory=dict)
    body_budget_left: int = BODY_BUDGET
    bodies_dropped: int = 0
    # Segments whose counts came from the report's cache (failcore.report.aggregates), not the tape.
    cached_segments: int = 0

    @property
    def timeline_omitted(self) -> int:
        return self.omitted.get("timeline", 0)

    # The run's LLM totals are the summary's (runs.RunSummary, what `failcore list` and `show` print).
    @property
    def llm_count(self) -> int:
        return self.summary.llm_calls

    @property
    def tokens_in(self) -> int:
        return self.summary.input_tokens

    @property
    def tokens_out(self) -> int:
        return self.summary.output_tokens

    @property
    def cost_usd(self) -> float:
        return self.summary.cost_usd

    @property
    def unpriced_calls(self) -> int:
        return self.summary.unpriced_calls


def host_key(ev: dict[str, Any]) -> str:
    target = as_dict(ev.get("target"))
    return f"{target.get('host')}:{target.get('port')}"


def int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def number_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[Any]:
    """A field that should hold a list, or nothing: recorded content may hold a number there."""
    return value if isinstance(value, list) else []


def llm_call_row(ev: dict[str, Any]) -> LlmCallRow | None:
    """The COST evidence of one network event, or None when it was not an LLM call."""
    llm = ev.get("llm")
    if not isinstance(llm, dict):
        return None
    usage = as_dict(llm.get("usage"))
    cost = as_dict(llm.get("cost"))
    known = usage.get("known") is True
    return LlmCallRow(
        seq=int_or_none(ev.get("seq")),
        ts=number_or_none(ev.get("ts_start")),
        host=host_key(ev),
        provider=llm.get("provider"),
        api=llm.get("api"),
        model=llm.get("response_model") or llm.get("request_model"),
        stream=llm.get("stream") is True,
        usage_known=known,
        input_tokens=int_or_none(usage.get("input_tokens")) if known else None,
        output_tokens=int_or_none(usage.get("output_tokens")) if known else None,
        total_tokens=int_or_none(usage.get("total_tokens")) if known else None,
        cost_usd=number_or_none(cost.get("usd")),
        cost_reason=cost.get("reason"),
        finish_reason=llm.get("finish_reason"),
    )


def _indented_json(text: str) -> str | None:
    """A complete JSON object or array body laid out one value a line (easier to read than one line)."""
    if len(text) > BODY_SHOW_CAP or not text.lstrip().startswith(("{", "[")):
        return None
    try:
        return orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2).decode()
    except (orjson.JSONDecodeError, TypeError):
        return None


def _header(message: dict[str, Any], name: str) -> str | None:
    for pair in message.get("headers") or ():
        if isinstance(pair, list | tuple) and len(pair) == 2 and str(pair[0]).lower() == name:
            return str(pair[1])
    return None


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector for one pass of the report (reading or rendering).

    Both passes allocate hundreds of thousands of containers that hold no cycles (parsed events, the
    page's pieces) while the report keeps thousands of them alive, so the collector keeps rescanning a
    growing heap for nothing (over half of the reading time measured on a 25k-event run). Pausing it
    changes no result; the few cycles made meanwhile are collected once it runs again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Collector:
    """Folds a stream of events into a RunReport whose every list is bounded by max_events."""

    def __init__(self, report: RunReport) -> None:
        self._report = report
        self._limit = report.max_events

    def _keep(self, section: str, items: list[Any], make: Callable[[], Any]) -> None:
        """Append `make()` while the list has room (built only then), else count it as left out."""
        if len(items) < self._limit:
            items.append(make())
        else:
            self._left_out(section)

    def _left_out(self, section: str) -> None:
        omitted = self._report.omitted
        omitted[section] = omitted.get(section, 0) + 1

    def add(self, ev: dict[str, Any]) -> None:
        report = self._report
        report.events_read += 1
        report.summary.add(ev)
        kind = ev.get("kind")
        if kind in _HIDDEN_KINDS:
            return
        # Only events the timeline shows keep (trimmed) bodies; the rest keep headers and metadata,
        # and an event no list keeps is never copied.
        slim: list[dict[str, Any]] = []

        def shown(with_bodies: bool = False) -> dict[str, Any]:
            if not slim:
                slim.append(self._shown(ev, with_bodies=with_bodies))
            return slim[0]

        if len(report.timeline) < self._limit:  # _keep, inlined: this runs for every event of the run
            report.timeline.append(shown(report.bodies))
        else:
            self._left_out("timeline")
        if kind == "network":
            self._add_network(ev, shown)
        elif kind in RUNTIME_KINDS:
            self._add_runtime(ev, shown)
        elif kind == "internal_error":
            self._keep("failed", report.failed, shown)

    def _shown(self, ev: dict[str, Any], *, with_bodies: bool) -> dict[str, Any]:
        """The event as the page shows it: bodies trimmed to what is shown, or dropped."""
        report = self._report
        shown = dict(ev)
        seq = int_or_none(ev.get("seq"))
        llm = as_dict(ev.get("llm"))
        request, response = as_dict(ev.get("request")), as_dict(ev.get("response"))
        if with_bodies and llm and seq is not None and report.body_budget_left > 0:
            req_body, resp_body = as_dict(request.get("body")), as_dict(response.get("body"))
            conv = read_conversation(
                llm.get("api"),
                req_body.get("text"),
                resp_body.get("text"),
                _header(response, "content-type"),
                request_truncated=req_body.get("truncated") is True,
                response_truncated=resp_body.get("truncated") is True,
            )
            if conv is not None and not conv.empty:
                size = sum(len(t.text) for t in (*conv.request, *conv.response))
                report.body_budget_left -= size
                report.conversations[seq] = conv
        for side, message in (("request", request), ("response", response)):
            if message:
                shown[side] = message | {"body": self._shown_body(as_dict(message.get("body")), with_bodies)}
        detail = as_dict(ev.get("detail"))
        if "body" in detail:
            shown["detail"] = detail | {"body": self._shown_body(as_dict(detail.get("body")), with_bodies)}
        return shown

    def _shown_body(self, body: dict[str, Any], with_bodies: bool) -> dict[str, Any] | None:
        if not body:
            return None
        report = self._report
        meta = {k: v for k, v in body.items() if k not in ("text", "b64")}
        text = body.get("text")
        if not with_bodies or not isinstance(text, str):
            return meta
        if report.body_budget_left <= 0:
            report.bodies_dropped += 1
            return meta | {"dropped": True}
        indented = _indented_json(text) if not body.get("truncated") else None
        if indented is not None:
            text = indented
        shown = text[:BODY_SHOW_CAP]
        report.body_budget_left -= len(shown)
        return meta | {"text": shown, "cut_here": len(shown) < len(text), "indented": indented is not None}

    def _add_findings(self, ev: dict[str, Any], shown: Callable[[], dict[str, Any]]) -> None:
        """The event's warnings and DLP hits, each a row of its section."""
        report = self._report
        for warning in as_list(ev.get("warnings")):
            if isinstance(warning, dict):
                self._keep("warnings", report.warnings, lambda w=warning: (shown(), w))
        for hit in as_list(as_dict(ev.get("dlp")).get("hits")):
            if isinstance(hit, dict):
                self._keep("dlp", report.dlp_hits, lambda h=hit: (shown(), h))

    def _add_runtime(self, ev: dict[str, Any], shown: Callable[[], dict[str, Any]]) -> None:
        """A tool call or one of its effects: listed with the blocked, warned and failed exchanges."""
        report = self._report
        if ev.get("kind") == "tool":
            self._keep("tools", report.tool_calls, shown)
        outcome, decision = ev.get("outcome"), ev.get("decision")
        if outcome == "BLOCKED":
            self._keep("blocked", report.blocked, shown)
        elif decision == "WARN":
            self._keep("warned", report.warned, shown)
        if outcome == "FAIL":
            self._keep("failed", report.failed, shown)
        self._add_findings(ev, shown)

    def _add_network(self, ev: dict[str, Any], shown: Callable[[], dict[str, Any]]) -> None:
        # Runs for every exchange of the run: the helpers (int_or_none, number_or_none, _keep) inlined.
        report = self._report
        get = ev.get
        key = host_key(ev)
        stats = report.hosts.get(key)
        if stats is None:
            if len(report.hosts) >= self._limit:
                self._left_out("hosts")
                stats = HostStats(key)  # counted in the summary, not shown
            else:
                stats = report.hosts[key] = HostStats(key)
        count_exchange(stats, get)
        outcome = get("outcome")
        if outcome == "BLOCKED":
            self._keep("blocked", report.blocked, shown)
        elif get("decision") == "WARN":
            self._keep("warned", report.warned, shown)
        if outcome == "FAIL":
            self._keep("failed", report.failed, shown)
        if get("warnings") or get("dlp"):
            self._add_findings(ev, shown)
        if isinstance(get("llm"), dict):  # counted in report.summary with the rest of the run
            if len(report.llm_calls) < self._limit:
                report.llm_calls.append(llm_call_row(ev))
            else:
                self._left_out("llm")


def collect_report(
    tape_dir: Path,
    run: str,
    *,
    public_key: Ed25519PublicKey | None = None,
    max_events: int = DEFAULT_MAX_EVENTS,
    bodies: bool = False,
    progress: Callable[[str], None] | None = None,
    index: bool = True,
) -> RunReport:
    """Read one run from the tape and verify the whole tape. Raises ReportError for an unknown run.
    `progress`, when given, is told what is happening every 10,000 events.

    The run's counts come from its per-segment aggregates (failcore.report.aggregates, cached under the
    view index; counted from the tape where no valid entry exists) and only the lines the page shows are
    parsed. `index=False`, or a bound past what the cache keeps, reads and counts every event of the run
    instead: the page is the same either way. When verification finds the chain broken (bytes edited
    in place), nothing cached is used: the run is counted again from the tape as it is."""
    tape_dir = Path(tape_dir)
    if not tape_dir.is_dir():
        raise ReportError(f"no tape at {tape_dir}")
    if max_events < 1:
        raise ReportError("--max-events must be at least 1")

    def fresh() -> RunReport:
        return RunReport(
            run=run,
            tape=tape_dir,
            summary=RunSummary(run=run),
            verification=VerifyReport(),
            generated=dt.datetime.now(dt.UTC).timestamp(),
            max_events=max_events,
            bodies=bodies,
        )

    from failcore.report.aggregates import OFFSET_CAP

    bounded = index and max_events < OFFSET_CAP
    # The whole tape is verified (no cached verdict) while the run is read: verification is mostly
    # sha256 over long lines, which runs without the GIL, so the two overlap on a second core.
    with paused_gc(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="failcore-verify") as pool:
        verifying = pool.submit(verify_tape, tape_dir, public_key=public_key)
        report = _read_bounded(fresh, progress, trust_cache=True) if bounded else None
        if report is None:
            report = _read_every_event(fresh(), progress)
        if not report.events_read:
            verifying.cancel()
            raise ReportError(f"no run {run!r} in {tape_dir}")
        if progress is not None and not verifying.done():
            progress(f"read {report.events_read:,} events of run {run}; verifying the whole tape")
        verification = verifying.result()
        if not verification.ok and report.cached_segments:
            report = _read_bounded(fresh, progress, trust_cache=False) or _read_every_event(fresh(), progress)
        report.verification = verification
    return report


def _read_every_event(report: RunReport, progress: Callable[[str], None] | None) -> RunReport:
    """Count and collect every event of the run (one streamed pass)."""
    collector = _Collector(report)
    run = report.run
    for ev in run_events(report.tape, run):
        collector.add(ev)
        if progress is not None and report.events_read % 10_000 == 0:
            progress(f"reading run {run}: {report.events_read:,} events")
    return report


def _read_bounded(
    fresh: Callable[[], RunReport], progress: Callable[[str], None] | None, *, trust_cache: bool
) -> RunReport | None:
    """The report from the run's aggregates and the lines it shows; None when the tape changed under
    the reading (the caller then reads every event)."""
    from failcore.report.aggregates import fill_report, run_parts
    from failcore.tui.cache import prepare_cache_dir

    report = fresh()
    run = report.run

    def counted(events: int) -> None:
        if progress is not None:
            progress(f"reading run {run}: {events:,} events")

    parts = run_parts(
        report.tape, run, prepare_cache_dir(report.tape), trust_cache=trust_cache, progress=counted
    )
    if not parts:
        return report
    if fill_report(report, parts, _Collector(report).add):
        report.cached_segments = sum(p.cached for p in parts)
        return report
    return _read_bounded(fresh, progress, trust_cache=False) if trust_cache else None
