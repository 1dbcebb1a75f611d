"""Compare two runs: where did the second one start to behave differently from the first?

The two request sequences are aligned on (method, host, path) with difflib, so an inserted or dropped
call does not shift every later comparison. Aligned requests are compared with the replay matcher's
normalisation (JSON key order and volatile fields ignored) and the first difference is named by its
JSON pointer, values masked where a DLP scan flagged them.

Guarded tool calls (kind `tool`, failcore.run / guard) are a second sequence, aligned on the tool's
name the same way; the first divergent tool call is the first aligned pair whose arguments (compared
by a key-order-independent hash, then named by the first differing JSON pointer) or outcome differ,
or a call only one run made.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failcore.replay.pointers import Pointer, parse_pointer
from failcore.replay.recording import event_request_shape, is_http_exchange
from failcore.replay.request import DEFAULT_IGNORED_POINTERS, RequestShape, dlp_pointers, request_difference
from failcore.tape import iter_events
from failcore.tape.badlines import BadLines
from failcore.views import runtime as rt


@dataclass(frozen=True, slots=True)
class RunRequest:
    seq: int
    summary: str
    shape: RequestShape
    decision: str | None
    status: int | None
    sensitive: tuple[Pointer, ...]
    llm: dict[str, Any] | None

    @property
    def align_key(self) -> tuple[str, str, str]:
        return self.shape.route

    def brief(self) -> dict[str, Any]:
        return {"seq": self.seq, "summary": self.summary, "host": self.shape.host}


def run_requests(events: Iterable[dict[str, Any]], ignore: Sequence[Pointer]) -> list[RunRequest]:
    out = []
    for event in events:
        if not is_http_exchange(event):
            continue
        llm = event.get("llm")
        out.append(
            RunRequest(
                seq=int(event.get("seq") or 0),
                summary=str(event.get("summary") or ""),
                shape=event_request_shape(event, ignore),
                decision=event.get("decision"),
                status=event.get("status"),
                sensitive=dlp_pointers(event),
                llm=llm if isinstance(llm, dict) else None,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One guarded tool call of a run, as `diff` compares it."""

    seq: int
    name: str
    args: object
    args_hash: str
    outcome: str | None
    decision: str | None
    rule: str | None

    @property
    def align_key(self) -> str:
        return self.name

    def brief(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "tool": self.name,
            "args_hash": self.args_hash,
            "outcome": self.outcome,
            "decision": self.decision,
            "rule": self.rule,
            "args": rt.args_summary(self.args),
        }


def run_tool_calls(events: Iterable[dict[str, Any]]) -> list[ToolCall]:
    out = []
    for event in events:
        if event.get("kind") != "tool":
            continue
        args = rt.tool_args(event)
        out.append(
            ToolCall(
                seq=int(event.get("seq") or 0),
                name=rt.tool_name(event),
                args=args,
                args_hash=rt.args_hash(args),
                outcome=event.get("outcome"),
                decision=event.get("decision"),
                rule=event.get("rule"),
            )
        )
    return out


def first_difference(a: object, b: object, at: str = "") -> tuple[str, object, object] | None:
    """(JSON pointer, value in a, value in b) of the first place two recorded values differ; object
    keys in a's order then b's extra keys (a key only one side has reads as absent: None)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in (*a, *(k for k in b if k not in a)):
            where = f"{at}/{str(key).replace('~', '~0').replace('/', '~1')}"
            if key not in a or key not in b:
                return where, a.get(key), b.get(key)
            found = first_difference(a[key], b[key], where)
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            found = first_difference(x, y, f"{at}/{i}")
            if found is not None:
                return found
        if len(a) != len(b):
            i = min(len(a), len(b))
            return f"{at}/{i}", a[i] if i < len(a) else None, b[i] if i < len(b) else None
        return None
    return None if a == b and type(a) is type(b) else (at, a, b)


def diff_tool_calls(a: Sequence[ToolCall], b: Sequence[ToolCall]) -> dict[str, Any] | None:
    """The first divergent tool call of run B against run A, or None when they made the same calls."""
    for i, j in align(a, b):
        if j is None:
            assert i is not None
            return {"kind": "only_in_a", "a": a[i].brief()}
        if i is None:
            return {"kind": "only_in_b", "b": b[j].brief()}
        ca, cb = a[i], b[j]
        differs = [
            what
            for what, x, y in (
                ("args", ca.args_hash, cb.args_hash),
                ("outcome", ca.outcome, cb.outcome),
                ("decision", ca.decision, cb.decision),
            )
            if x != y
        ]
        if not differs:
            continue
        found: dict[str, Any] = {"kind": "tool", "differs": differs, "a": ca.brief(), "b": cb.brief()}
        if "args" in differs:
            where = first_difference(ca.args, cb.args)
            if where is not None:
                pointer, va, vb = where
                found.update(pointer=pointer, recorded=rt.compact_json(va), live=rt.compact_json(vb))
        return found
    return None


def align(
    a: Sequence[RunRequest] | Sequence[ToolCall], b: Sequence[RunRequest] | Sequence[ToolCall]
) -> list[tuple[int | None, int | None]]:
    """Index pairs in order; None on one side for a request (or tool call) only the other run made."""
    matcher = difflib.SequenceMatcher(
        None, [r.align_key for r in a], [r.align_key for r in b], autojunk=False
    )
    pairs: list[tuple[int | None, int | None]] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            pairs.extend(zip(range(i1, i2), range(j1, j2), strict=True))
            continue
        # A replaced block: the leading requests stand against each other, the rest are one-sided.
        common = min(i2 - i1, j2 - j1) if op == "replace" else 0
        pairs.extend(zip(range(i1, i1 + common), range(j1, j1 + common), strict=True))
        pairs.extend((i, None) for i in range(i1 + common, i2))
        pairs.extend((None, j) for j in range(j1 + common, j2))
    return pairs


@dataclass(slots=True)
class Totals:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0
    usd_known: bool = True

    def add(self, llm: dict[str, Any] | None) -> None:
        if llm is None:
            return
        self.calls += 1
        usage = llm.get("usage") or {}
        self.input_tokens += usage.get("input_tokens") or 0
        self.output_tokens += usage.get("output_tokens") or 0
        usd = (llm.get("cost") or {}).get("usd")
        if isinstance(usd, int | float):
            self.usd += usd
        else:
            self.usd_known = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "llm_calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "usd": round(self.usd, 6) if self.usd_known else None,
        }


@dataclass(slots=True)
class RunDiff:
    run_a: str
    run_b: str
    requests_a: int
    requests_b: int
    first_divergence: dict[str, Any] | None = None
    only_in_a: list[dict[str, Any]] = field(default_factory=list)
    only_in_b: list[dict[str, Any]] = field(default_factory=list)
    hosts_only_in_a: list[str] = field(default_factory=list)
    hosts_only_in_b: list[str] = field(default_factory=list)
    decision_changes: list[dict[str, Any]] = field(default_factory=list)
    status_changes: list[dict[str, Any]] = field(default_factory=list)
    totals_a: dict[str, Any] = field(default_factory=dict)
    totals_b: dict[str, Any] = field(default_factory=dict)
    tool_calls_a: int = 0
    tool_calls_b: int = 0
    first_tool_divergence: dict[str, Any] | None = None

    @property
    def diverged(self) -> bool:
        return bool(
            self.first_divergence
            or self.first_tool_divergence
            or self.hosts_only_in_a
            or self.hosts_only_in_b
            or self.decision_changes
            or self.status_changes
        )

    def delta(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("llm_calls", "input_tokens", "output_tokens", "usd"):
            a, b = self.totals_a.get(name), self.totals_b.get(name)
            out[name] = round(b - a, 6) if isinstance(a, int | float) and isinstance(b, int | float) else None
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_a": self.run_a,
            "run_b": self.run_b,
            "diverged": self.diverged,
            "requests": {"a": self.requests_a, "b": self.requests_b},
            "first_divergence": self.first_divergence,
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "hosts_only_in_a": self.hosts_only_in_a,
            "hosts_only_in_b": self.hosts_only_in_b,
            "decision_changes": self.decision_changes,
            "status_changes": self.status_changes,
            "totals": {"a": self.totals_a, "b": self.totals_b, "delta": self.delta()},
            "tool_calls": {"a": self.tool_calls_a, "b": self.tool_calls_b},
            "first_tool_divergence": self.first_tool_divergence,
        }


def diff_requests(run_a: str, a: Sequence[RunRequest], run_b: str, b: Sequence[RunRequest]) -> RunDiff:
    result = RunDiff(run_a, run_b, len(a), len(b))
    for i, j in align(a, b):
        ra = a[i] if i is not None else None
        rb = b[j] if j is not None else None
        if ra is None or rb is None:
            only = result.only_in_a if rb is None else result.only_in_b
            one = ra or rb
            assert one is not None
            only.append(one.brief())
            if result.first_divergence is None:
                side = "a" if rb is None else "b"
                result.first_divergence = {"kind": f"only_in_{side}", side: one.brief()}
            continue
        difference = request_difference(ra.shape, rb.shape, (*ra.sensitive, *rb.sensitive))
        if difference is not None and result.first_divergence is None:
            result.first_divergence = {"kind": "request", "a": ra.brief(), "b": rb.brief(), **difference}
        if ra.decision != rb.decision:
            result.decision_changes.append(
                {"a": ra.brief(), "b": rb.brief(), "from": ra.decision, "to": rb.decision}
            )
        if ra.status != rb.status:
            result.status_changes.append(
                {"a": ra.brief(), "b": rb.brief(), "from": ra.status, "to": rb.status}
            )
    hosts_a = {r.shape.host for r in a}
    hosts_b = {r.shape.host for r in b}
    result.hosts_only_in_a = sorted(hosts_a - hosts_b)
    result.hosts_only_in_b = sorted(hosts_b - hosts_a)
    totals_a, totals_b = Totals(), Totals()
    for r in a:
        totals_a.add(r.llm)
    for r in b:
        totals_b.add(r.llm)
    result.totals_a, result.totals_b = totals_a.to_dict(), totals_b.to_dict()
    return result


def diff_runs(
    tape: Path, run_a: str, run_b: str, ignore: Sequence[str] = (), bad: BadLines | None = None
) -> RunDiff:
    """The two runs compared. A line read that is not as failcore wrote it (edited, cut short) goes to
    `bad` (BadLines: named by segment and line), and is compared as it is now."""
    pointers = tuple(parse_pointer(p) for p in (*DEFAULT_IGNORED_POINTERS, *ignore))
    sides = []
    tools = []
    for run in (run_a, run_b):
        events = list(
            iter_events(
                tape,
                run=run,
                kinds=("network", "run_start", "tool"),
                on_bad_line=bad if bad is not None else lambda line, why: None,
                check_lines=bad is not None,
            )
        )
        if not events:
            raise ValueError(f"no run {run!r} on the tape {tape}")
        sides.append(run_requests(events, pointers))
        tools.append(run_tool_calls(events))
    result = diff_requests(run_a, sides[0], run_b, sides[1])
    result.tool_calls_a, result.tool_calls_b = len(tools[0]), len(tools[1])
    result.first_tool_divergence = diff_tool_calls(tools[0], tools[1])
    return result
