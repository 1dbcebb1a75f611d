"""Run summaries computed from a tape in one lazy pass: the one aggregator of a run's counts, used by
`list`, `show`, `run`, `sample`, the HTML report and the viewer's index (which keeps one per run and
segment and merges them, so a cached segment is never re-read)."""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from failcore.tape import iter_events
from failcore.tape.badlines import BadLines, LineNumbers, parse_checked
from failcore.tape.reader import list_segments

# Network events that are connections, not HTTP exchanges: counted apart from `requests`.
CONNECTION_ACTIONS = frozenset({"tls.handshake", "tcp.stream", "tcp.passthrough", "ip.packet"})
# The runtime's kinds (schema v2; failcore.views.runtime reads them for the views).
_RUNTIME_KINDS = frozenset({"tool", "fs", "exec", "connect"})
_NUMBERS = (int, float)
_EMPTY: dict[str, Any] = {}


@dataclass(slots=True)
class RunSummary:
    run: str
    started: float | None = None
    ended: float | None = None
    requests: int = 0
    blocked: int = 0
    warned: int = 0
    would_block: int = 0
    failed: int = 0
    internal_errors: int = 0
    dropped: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    websocket_messages: int = 0
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    # Calls whose cost is unknown (unpriced model or no usage reported): the total is a lower bound.
    unpriced_calls: int = 0
    policy: str | None = None
    mode: str | None = None
    hosts: dict[str, int] = field(default_factory=dict)
    fail_reasons: dict[str, int] = field(default_factory=dict)
    # Blocked exchanges by the rule that blocked them (a DLP rule reads dlp:RULE).
    block_rules: dict[str, int] = field(default_factory=dict)
    dlp_hits: int = 0
    dlp_exchanges: int = 0
    dlp_severities: dict[str, int] = field(default_factory=dict)
    # Exchanges let through although a DLP hit's action was BLOCK (observe mode).
    dlp_would_block: int = 0
    # Connections that never became an HTTP exchange (not in `requests`): clients that rejected
    # failcore's CA, TCP that is not HTTP, and what a contained command sent that was refused.
    tls_failures: int = 0
    tls_failed_hosts: dict[str, int] = field(default_factory=dict)
    raw_tcp: int = 0
    refused: int = 0
    refused_targets: dict[str, int] = field(default_factory=dict)
    # The runtime's events (failcore.run / guard): guarded tool calls and the effects seen inside them
    # (fs, exec, connect events), counted apart from the network exchanges above.
    tool_calls: int = 0
    tool_blocked: int = 0
    tool_failed: int = 0
    tool_warned: int = 0
    contract_drifts: int = 0
    effects_fs: int = 0
    effects_exec: int = 0
    effects_connect: int = 0
    effects_blocked: int = 0
    effects_warned: int = 0
    tools: dict[str, int] = field(default_factory=dict)
    # Blocked tool calls and effects by the rule that blocked them.
    runtime_block_rules: dict[str, int] = field(default_factory=dict)

    def add(self, ev: dict[str, Any]) -> None:
        """Count one event. A line failcore did not write (a field of the wrong type) is counted as far
        as it goes and never stops the count: the viewer and `list` read hostile tapes too. (Written for
        speed: the viewer's index counts every line of a tape through here.)"""
        try:
            get = ev.get
            kind = get("kind")
            ts = get("ts_start") or get("ts")
            if ts.__class__ not in _NUMBERS:
                ts = None
            elif self.started is None or ts < self.started:
                self.started = ts
            end = get("ts_end") or ts
            if end.__class__ in _NUMBERS and (self.ended is None or end > self.ended):
                self.ended = end
            if kind == "network":
                if get("action") in CONNECTION_ACTIONS:
                    self._add_connection(ev)
                    return
                self.requests += 1
                self.bytes_out += get("bytes_out") or 0
                self.bytes_in += get("bytes_in") or 0
                target = get("target") or _EMPTY
                host = f"{target.get('host')}:{target.get('port')}"
                hosts = self.hosts
                hosts[host] = hosts.get(host, 0) + 1
                outcome = get("outcome")
                decision = get("decision")
                if outcome == "BLOCKED":
                    self.blocked += 1
                    rule = get("rule") or "(no rule)"
                    self.block_rules[rule] = self.block_rules.get(rule, 0) + 1
                elif decision == "WARN":
                    self.warned += 1
                if decision == "WARN" and get("would_block"):
                    self.would_block += 1
                llm = get("llm")
                if llm:
                    self._add_llm(llm)
                if get("dlp"):
                    self._add_dlp(ev)
                if outcome == "FAIL":
                    self.failed += 1
                    reason = get("fail_reason") or "unknown"
                    self.fail_reasons[reason] = self.fail_reasons.get(reason, 0) + 1
            elif kind in _RUNTIME_KINDS:
                self._add_runtime(ev, kind)
            elif kind == "websocket":
                self.websocket_messages += 1
                if get("dlp"):
                    self._add_dlp(ev)
            elif kind == "internal_error":
                self.internal_errors += 1
            elif kind == "dropped":
                self.dropped += get("count") or 0
            elif kind == "run_start":
                detail = get("detail") or _EMPTY
                self.policy = detail.get("policy")
                self.mode = detail.get("mode")
        except (AttributeError, TypeError, ValueError):
            pass

    def _add_runtime(self, ev: dict[str, Any], kind: str) -> None:
        get = ev.get
        outcome = get("outcome")
        blocked = outcome == "BLOCKED"
        if kind == "tool":
            self.tool_calls += 1
            tool = get("tool") or _EMPTY
            name = tool.get("name") or get("action") or "(unnamed)"
            if name.__class__ is str:
                self.tools[name] = self.tools.get(name, 0) + 1
            if blocked:
                self.tool_blocked += 1
            elif get("decision") == "WARN":
                self.tool_warned += 1
            if outcome == "FAIL":
                self.tool_failed += 1
            contract = tool.get("contract")
            if contract and contract.get("drift"):
                self.contract_drifts += 1
        else:
            if kind == "fs":
                self.effects_fs += 1
            elif kind == "exec":
                self.effects_exec += 1
            else:
                self.effects_connect += 1
            if blocked:
                self.effects_blocked += 1
            elif get("decision") == "WARN":
                self.effects_warned += 1
        if blocked:
            rule = get("rule") or "(no rule)"
            if rule.__class__ is str:
                self.runtime_block_rules[rule] = self.runtime_block_rules.get(rule, 0) + 1
        if get("dlp"):
            self._add_dlp(ev)

    @property
    def effects(self) -> int:
        """fs, exec and connect events seen inside guarded calls."""
        return self.effects_fs + self.effects_exec + self.effects_connect

    def _add_dlp(self, ev: dict[str, Any]) -> None:
        dlp = ev.get("dlp")
        hits = dlp.get("hits") if isinstance(dlp, dict) else None
        if not hits:
            return
        self.dlp_exchanges += 1
        self.dlp_hits += len(hits)
        for hit in hits:
            severity = hit.get("severity") or "unknown"
            self.dlp_severities[severity] = self.dlp_severities.get(severity, 0) + 1
        if ev.get("outcome") != "BLOCKED" and any(h.get("action") == "BLOCK" for h in hits):
            self.dlp_would_block += 1

    def _add_connection(self, ev: dict[str, Any]) -> None:
        target = ev.get("target") or {}
        where = f"{target.get('host')}:{target.get('port')}"
        action = ev.get("action")
        if action == "tls.handshake":
            self.tls_failures += 1
            self.tls_failed_hosts[where] = self.tls_failed_hosts.get(where, 0) + 1
            return
        self._add_dlp(ev)
        if ev.get("outcome") == "BLOCKED":
            self.blocked += 1
            rule = ev.get("rule") or "(no rule)"
            self.block_rules[rule] = self.block_rules.get(rule, 0) + 1
        if action == "ip.packet":
            self.refused += 1
            protocol = (ev.get("detail") or {}).get("protocol") or target.get("scheme")
            what = f"{protocol} {where if target.get('port') else target.get('host')}"
            self.refused_targets[what] = self.refused_targets.get(what, 0) + 1
        else:
            self.raw_tcp += 1
            self.bytes_out += ev.get("bytes_out") or 0
            self.bytes_in += ev.get("bytes_in") or 0

    def _add_llm(self, llm: dict[str, Any]) -> None:
        self.llm_calls += 1
        usage = llm.get("usage") or {}
        self.input_tokens += usage.get("input_tokens") or 0
        self.output_tokens += usage.get("output_tokens") or 0
        usd = (llm.get("cost") or {}).get("usd")
        if usd is None:
            self.unpriced_calls += 1
        else:
            self.cost_usd = round(self.cost_usd + usd, 9)

    @property
    def tokens(self) -> int | None:
        """Input + output tokens of the run's LLM calls; None when it made none."""
        return self.input_tokens + self.output_tokens if self.llm_calls else None

    @property
    def priced_usd(self) -> float | None:
        """The cost of the calls that have a price; None when no call has one."""
        return self.cost_usd if self.llm_calls > self.unpriced_calls else None

    def merge(self, other: RunSummary) -> None:
        """Add another part of the same run (the viewer counts each tape segment on its own)."""
        if other.started is not None and (self.started is None or other.started < self.started):
            self.started = other.started
        if other.ended is not None and (self.ended is None or other.ended > self.ended):
            self.ended = other.ended
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cost_usd = round(self.cost_usd + other.cost_usd, 9)
        for name in _TALLIES:
            mine: dict[str, int] = getattr(self, name)
            for key, count in getattr(other, name).items():
                mine[key] = mine.get(key, 0) + count
        if other.policy is not None or other.mode is not None:  # the run_start is in the later part
            self.policy, self.mode = other.policy, other.mode

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        """The inverse of `to_dict` (the viewer's index cache); an unknown key is a TypeError."""
        return cls(**data)


_TALLIES: tuple[str, ...] = tuple(
    f.name
    for f in fields(RunSummary)
    if f.default_factory is dict  # type: ignore[comparison-overlap]
)
_COUNTS: tuple[str, ...] = tuple(f.name for f in fields(RunSummary) if f.type == "int")


def summarize(events: Iterable[dict[str, Any]]) -> list[RunSummary]:
    runs: dict[str, RunSummary] = {}
    for ev in events:
        run = ev.get("run")
        if not run:
            continue
        summary = runs.get(run)
        if summary is None:
            summary = runs[run] = RunSummary(run=run)
        summary.add(ev)
    return sorted(runs.values(), key=lambda r: r.started or 0.0)


def summarize_tape(tape_dir: Path, run: str | None = None, bad: BadLines | None = None) -> list[RunSummary]:
    """Every run's summary (or one run's); each line read is checked into `bad` when given."""
    return summarize(_events(tape_dir, bad, run=run))


def _events(tape_dir: Path, bad: BadLines | None, **filters: Any) -> Iterator[dict[str, Any]]:
    """iter_events with each line checked into `bad`; without one, broken lines are skipped unnamed."""
    if bad is None:
        return iter_events(tape_dir, on_bad_line=lambda line, why: None, **filters)
    return iter_events(tape_dir, on_bad_line=bad, check_lines=True, **filters)


class UnknownRun(LookupError):
    """A run id that names no run of the tape, or more than one."""


def run_ids(tape_dir: Path) -> list[str]:
    """Every run of the tape, in the order they started."""
    seen: dict[str, None] = {}
    for ev in _events(tape_dir, None, kinds=("run_start",)):
        if run := ev.get("run"):
            seen.setdefault(run, None)
    return list(seen)


def resolve_run(tape_dir: Path, wanted: str) -> str:
    """A run named in full, or by a prefix or suffix only one run has."""
    if wanted and _has_run_start(tape_dir, wanted):  # a byte search instead of a pass over every line
        return wanted
    ids = run_ids(tape_dir)
    if wanted in ids:
        return wanted
    matches = [r for r in ids if r.startswith(wanted) or r.endswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        recent = ", ".join(ids[-3:]) or "none"
        raise UnknownRun(f"no run {wanted!r} in {tape_dir} (latest: {recent}; `failcore list` lists all)")
    raise UnknownRun(f"{wanted!r} names {len(matches)} runs ({', '.join(matches[:5])}): give more of the id")


def last_run_id(tape_dir: Path) -> str | None:
    """The run of the tape's last run_start event (searched from the end, not read from the start)."""
    segments = list_segments(tape_dir)
    for index in range(len(segments) - 1, -1, -1):
        found: dict[str, Any] | None = None
        # The open segment is read piece by piece (the last run_start of the last piece holding one
        # wins); a sealed one is mapped and searched from its end.
        for _, data in segment_chunks(segments[index], sealed=index < len(segments) - 1):
            limit = len(data)
            while (at := data.rfind(_RUN_START, 0, limit)) != -1:
                start, event = _run_start_at(data, at)
                if event is not None:
                    found = event
                    break
                limit = start
        if found is not None:
            return found.get("run")
    return None


# Byte searches that find exactly the lines iter_events(kinds=("run_start",)) yields: a complete line
# holding orjson's bytes for "kind":"run_start" that parses to an object of that kind.
_RUN_START = b'"kind":"run_start"'


class _mapped:
    """A segment mapped read-only (None for an empty or vanished one); `with _mapped(path) as data:`.

    Only for sealed segments (a later segment exists): the writer truncates the segment it writes to
    undo a partial write (tape/writer.py `_undo_partial_write`), and touching a mapped page past a
    file's new end kills the reader with SIGBUS. The open segment is read with `segment_chunks`."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._map: mmap.mmap | None = None

    def __enter__(self) -> mmap.mmap | None:
        try:
            with open(self._path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # ValueError: an empty file cannot be mapped
            return None
        return self._map

    def __exit__(self, *exc: object) -> None:
        if self._map is not None:
            self._map.close()


# Bytes read at a time from the open segment (a line longer than this is read whole).
_CHUNK = 8 * 2**20


def segment_chunks(path: Path, *, sealed: bool, start: int = 0) -> Iterator[tuple[int, bytes | mmap.mmap]]:
    """(offset of `data` in the segment, data) covering the segment from byte `start` (a line start):
    a sealed segment mapped whole (offset 0: search it from `start`), the open one read in pieces that
    each hold complete lines (and maybe part of the next: a line still being written is skipped by
    every reader, as iter_events skips it). Reading, unlike a mapping, cannot crash when the writer
    truncates the file meanwhile: the reader then sees its end sooner."""
    if sealed:
        with _mapped(path) as data:
            if data is not None:
                yield 0, data
        return
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below, across the yields
    except OSError:
        return
    with f:
        try:
            f.seek(start)
        except OSError:
            return
        base, carry = start, b""
        while True:
            try:
                piece = f.read(_CHUNK)
            except OSError:
                return
            if not piece:
                return
            data = carry + piece if carry else piece
            cut = data.rfind(b"\n") + 1
            if cut:
                yield base, data
                base, carry = base + cut, data[cut:]
            else:
                carry = data


def _run_start_at(data: bytes | mmap.mmap, found: int) -> tuple[int, dict[str, Any] | None]:
    """(start of the line holding byte `found`, its run_start event or None)."""
    start = data.rfind(b"\n", 0, found) + 1
    end = data.find(b"\n", found)
    if end == -1:
        return start, None  # a line still being written: iter_events skips it too
    line = data[start:end]
    if _RUN_START not in line:
        return start, None
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return start, None
    if not isinstance(event, dict) or event.get("kind") != "run_start":
        return start, None
    return start, event


def _has_run_start(tape_dir: Path, run: str) -> bool:
    """Whether run_ids(tape_dir) holds `run`, found by searching for its bytes."""
    for _, _, line in _lines_holding(tape_dir, b'"run":' + orjson.dumps(run)):
        if _RUN_START not in line:
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("kind") == "run_start" and event.get("run") == run:
            return True
    return False


def _lines_holding(tape_dir: Path, needle: bytes) -> Iterator[tuple[Path, int, bytes]]:
    """(segment, offset in it, line) of the complete lines of the tape's segments that hold `needle`, in
    order; a line still being written is skipped, as iter_events skips it. Other lines are never split
    out."""
    segments = list_segments(tape_dir)
    for index, path in enumerate(segments):
        for base, data in segment_chunks(path, sealed=index < len(segments) - 1):
            for begin, line in segment_lines_holding(data, needle):
                yield path, base + begin, line


def segment_lines_holding(
    data: bytes | mmap.mmap, needle: bytes, start: int = 0
) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of the complete lines of a segment's data (see `segment_chunks`) that hold
    `needle`, from `start` (the start of a line) on, in order; a line without its newline is skipped."""
    position = start
    while (found := data.find(needle, position)) != -1:
        end = data.find(b"\n", found)
        if end == -1:
            break  # the last line, still being written
        begin = data.rfind(b"\n", 0, found) + 1
        yield begin, data[begin:end]
        position = end + 1


def run_events(tape_dir: Path, run: str | None, bad: BadLines | None = None) -> Iterator[dict[str, Any]]:
    """A run's events, or with `run=None` the whole tape's; each line read is checked into `bad` when
    given (tape/badlines.py; the chain is verify's business). A run's are found by a byte search (the
    lines of other runs are not split into lines or parsed)."""
    if run is not None:
        return _searched_run_events(tape_dir, run, bad)
    return _events(tape_dir, bad)


def _searched_run_events(tape_dir: Path, run: str, bad: BadLines | None) -> Iterator[dict[str, Any]]:
    """What `run_events(tape_dir, None, bad)` yields of `run`, found by searching each segment for
    orjson's bytes for `"run":<run>`: only the complete lines holding them are cut out, checked and
    parsed; what iter_events skips is skipped, and a broken line is named in `bad` by its segment and
    line number (counted only then)."""
    numbers: dict[Path, LineNumbers] = {}
    for path, offset, line in _lines_holding(tape_dir, b'"run":' + orjson.dumps(run)):
        event, why = parse_checked(line, bad is not None, orjson.loads)
        if why is not None and bad is not None:
            bad.add(path.name, numbers.setdefault(path, LineNumbers(path)).at(offset), why)
        if event is not None and event.get("run") == run:
            yield event
