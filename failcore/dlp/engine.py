"""Linear-time multi-rule scanner.

Pipeline: a prefilter finds where each rule could match, RE2 confirms the exact span on small windows
around those places (with the full text as context so `\\b`, `^` and `$` keep their meaning), then
validators, entropy and allowlists decide. Backends:

* ``hyperscan``: one Hyperscan database of every rule regex reports match end offsets in one pass;
  rules Hyperscan refuses are handled like the ``re2`` backend.
* ``re2``: one RE2 alternation of all keywords finds keyword positions; rules without keywords are run
  over the whole text. Linear, but several times slower than Hyperscan.
* ``python``: last resort when neither library is importable. Uses Python ``re`` only for rules whose
  shape cannot backtrack catastrophically; the others are listed in ``skipped`` and not run. Much slower.

Size: ~780 lines because the backends share one pipeline (prefilter, confirm, validate) and the
Hyperscan fast path's extra databases (keyword-gated rules, keywords, the rules read line by line for
quiet_lines) are built and consulted by the same object as the main one. What stands alone has its
own module: decoded views (decode.py), regex adapters and pattern analysis (regex_backend.py), the
compile cache (hscache.py), the background build (pending.py), masking, validators.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from failcore.dlp import decode as dv
from failcore.dlp import hscache
from failcore.dlp import regex_backend as rx
from failcore.dlp.masking import fingerprint, mask_preview
from failcore.dlp.model import DlpAllowlist, DlpRule, Hit
from failcore.dlp.validators import NAMED_VALIDATORS, shannon_entropy
from failcore.dlp.wide import narrowed
from failcore.wiretext import utf8_bytes

BACKENDS: tuple[str, ...] = ("auto", "hyperscan", "re2", "python")
# Beyond this many prefilter events the text is pathological for the rule set; one linear RE2 pass per
# rule is then cheaper than handling every event in Python.
MAX_PREFILTER_EVENTS = 200_000
# Past this many match ends of an unbounded rule in one buffer, its window starts at 0 (bounding each
# start costs a little Python per end).
MAX_BOUNDED_ENDS = 256
_SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}

Window = tuple[int, int]
# An anchor on the whole text's start or end (conservatively: also a `\\` escape followed by A, z or Z).
_WHOLE_TEXT_ANCHOR = re.compile(rb"\\[AzZ]")
# One Hyperscan pass: match ends by expression id (None: the event budget ran out), and the budget left.
_HsPass = tuple[dict[int, list[int]] | None, list[int]]


def _stop(*_event: object) -> bool:
    return True  # (a Hyperscan match handler that ends the pass at the first match)


def keyword_positions(
    pattern: rx.CompiledPattern, owners: dict[bytes, list[int]], buffer: bytes
) -> dict[bytes, list[Window]]:
    """Every occurrence of every keyword, overlapping ones included. One pass of the alternation
    reports no overlaps: a keyword that begins inside another's match (`s.` hiding `.atlasv1.`, `a3t`
    hiding `t3blbkfj`) would be missed and its rule given no window, where Hyperscan, matching the
    rule itself, finds the secret. So after each match the few bytes it covers are searched again."""
    longest = max(map(len, owners), default=0)
    positions: dict[bytes, list[Window]] = defaultdict(list)
    for match in pattern.finditer(buffer):
        start, end = match.span()
        positions[match.group(0).lower()].append((start, end))
        # Keywords that begin inside this match: searched in a small copy (start+1 .. end+longest).
        base = start + 1
        while base < end:
            inner = next(iter(pattern.finditer(buffer[base : end + longest])), None)
            if inner is None or base + inner.start() >= end:
                break
            span = (base + inner.start(), base + inner.end())
            positions[inner.group(0).lower()].append(span)
            base = span[0] + 1
    return positions


@dataclass(frozen=True, slots=True)
class _CompiledAllowlist:
    regexes: tuple[rx.CompiledPattern, ...]
    stopwords: tuple[bytes, ...]
    target: str
    condition: str


@dataclass(frozen=True, slots=True)
class _PreparedRule:
    rule: DlpRule
    pattern: rx.CompiledPattern
    width: int
    keywords: tuple[bytes, ...]
    validator: Callable[[str], bool] | None
    allowlists: tuple[_CompiledAllowlist, ...]
    fragment_keywords: bool


def _rank(hit: Hit) -> int:
    return _SEVERITY_RANK.get(hit.severity, 0)


def resolve_backend(requested: str) -> str:
    if requested not in BACKENDS:
        raise ValueError(f"unknown DLP backend {requested!r}; expected one of {', '.join(BACKENDS)}")
    if requested == "auto":
        if rx.hyperscan_available() and rx.re2_available():
            return "hyperscan"
        return "re2" if rx.re2_available() else "python"
    if requested in ("hyperscan", "re2") and not rx.re2_available():
        raise ValueError(f"DLP backend {requested!r} needs google-re2, which is not installed")
    if requested == "hyperscan" and not rx.hyperscan_available():
        raise ValueError("DLP backend 'hyperscan' is not available: the hyperscan module is not installed")
    return requested


def merge_windows(windows: list[Window]) -> list[Window]:
    merged: list[Window] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


# A rule whose keyword presence is looked up: the end of its first few confirm windows is searched
# (its keyword is usually inside the match), else one pass of the keyword database answers for every
# rule of the buffer at once.
MAX_WINDOW_LOOKUPS = 8
MAX_WINDOW_LOOKUP_BYTES = 1024


class _Keywords:
    """Which fragment-keyword rules have a keyword in one scanned buffer, or in the buffer it was
    decoded from (`inherited`): gitleaks runs such a rule only then. The rules in `found` are known to
    have one. When `exact` is None no other rule has; else that is known only of the rules in `exact`,
    and any other rule is looked up the first time it matched."""

    def __init__(
        self,
        engine: DlpEngine,
        buffer: bytes,
        found: set[int],
        exact: frozenset[int] | None,
        inherited: _Keywords | None,
    ) -> None:
        self._engine = engine
        self._buffer = buffer
        self._found = found
        self._exact = exact
        self.inherited = inherited

    def has(self, index: int, windows: Sequence[Window] = ()) -> bool:
        if self._own(index, windows):
            return True
        return self.inherited is not None and self.inherited.has(index)

    def _own(self, index: int, windows: Sequence[Window]) -> bool:
        if index in self._found:
            return True
        if self._exact is None or index in self._exact:
            return False
        keywords = self._engine._rules[index].keywords
        for start, end in windows[:MAX_WINDOW_LOOKUPS]:
            part = self._buffer[max(start, end - MAX_WINDOW_LOOKUP_BYTES) : end].lower()
            if any(keyword in part for keyword in keywords):
                self._found.add(index)
                return True
        self._found |= self._engine._keyword_rules(self._buffer)
        self._exact = None
        return index in self._found


class DlpEngine:
    """Scans bytes or text with a fixed rule set. Safe to share between threads (scans are serialised)."""

    def __init__(
        self,
        rules: Sequence[DlpRule],
        *,
        backend: str = "auto",
        salt: bytes,
        fast_paths: bool = True,
        on_compile: Callable[[], None] | None = None,
    ) -> None:
        """`fast_paths=False` keeps the plain Hyperscan pass (every rule, as written, and every fragment
        keyword in one database; windows from each rule's own width; no early answer for a text the
        main pass reports nothing in): the same findings, slower
        (tests/test_dlp_fastpath.py compares the two). `on_compile` is called (once or more) before a
        Hyperscan database that is not in the on-disk cache is compiled: seconds of work follow."""
        if not salt:
            raise ValueError("a non-empty salt is required so fingerprints cannot be precomputed")
        self.backend = resolve_backend(backend)
        self._salt = salt
        self._on_compile = on_compile
        # The pattern analysis of these rules (Python's `re` parser over every regex, most of a build
        # whose Hyperscan databases are cached) comes from the on-disk cache too, when it holds it.
        rules = list(rules)
        analysis_key = hscache.analysis_key([rule.regex for rule in rules])
        stored = hscache.preload_analysis(analysis_key)
        with rx.recording_analysis() as use:
            self._build(rules, fast_paths)
        if not stored or use.computed:
            hscache.save_analysis(analysis_key, use)

    def _build(self, rules: list[DlpRule], fast_paths: bool) -> None:
        self.skipped: list[tuple[str, str]] = []
        self._compile = rx.compile_python_safe if self.backend == "python" else rx.compile_re2
        self._rules: list[_PreparedRule] = []
        for rule in rules:
            prepared = self._prepare(rule)
            if prepared is not None:
                self._rules.append(prepared)
        self._lock = threading.Lock()
        self._hs_db = None
        self._hs_rule_indexes: list[int] = []
        self._hs_keyword_owners: list[list[int]] = []
        self._hs_run_id = -1
        self._fast = fast_paths and self.backend == "hyperscan"
        # Fast path: rules with no literal Hyperscan can anchor on, each in its own database, scanned
        # only when one of their keywords occurs; and one database of every fragment keyword.
        self._hs_gated: list[tuple[int, Any]] = []
        self._hs_keyword_db: Any = None
        self._hs_keywords: list[list[int]] = []
        # Fast path: the main database's rules and keywords read line by line (quiet_lines).
        self._hs_line_db: Any = None
        # Fast path: tighter confirm windows (rule index -> width, and for an unbounded width the
        # shape `run_bound` gives, when it has one).
        self._window_shapes: dict[int, tuple[int, tuple[int, bytes] | None]] = {}
        keyword_path = list(range(len(self._rules)))
        if self.backend == "hyperscan":
            keyword_path = self._build_hyperscan()
        self._keyword_path_rules = keyword_path
        self._exact_keywords: frozenset[int] | None = None
        if self._fast:
            self._exact_keywords = frozenset(keyword_path) | {index for index, _ in self._hs_gated}
        self._keyword_pattern, self._keyword_owners = self._build_keyword_prefilter(keyword_path)
        self._keyword_all: tuple[rx.CompiledPattern | None, dict[bytes, list[int]]] | None = None
        if len(keyword_path) == len(self._rules):
            self._keyword_all = (self._keyword_pattern, self._keyword_owners)

    @property
    def rules(self) -> list[DlpRule]:
        return [prepared.rule for prepared in self._rules]

    @property
    def salt(self) -> bytes:
        """The salt of this engine's fingerprints (the proxy's: its evidence masks with the same)."""
        return self._salt

    def _prepare(self, rule: DlpRule) -> _PreparedRule | None:
        try:
            pattern = self._compile(rule.regex)
        except rx.PatternError as exc:
            if self.backend == "python":
                self.skipped.append((rule.id, str(exc)))
                return None
            raise ValueError(f"rule {rule.id!r}: {exc}") from None
        if rule.secret_group > pattern.groups:
            raise ValueError(
                f"rule {rule.id!r}: secret_group {rule.secret_group} but the regex has "
                f"{pattern.groups} capture group(s)"
            )
        if rule.validator is not None and rule.validator not in NAMED_VALIDATORS:
            raise ValueError(f"rule {rule.id!r}: unknown validator {rule.validator!r}")
        return _PreparedRule(
            rule=rule,
            pattern=pattern,
            width=rx.max_match_width(rule.regex),
            keywords=tuple(keyword.lower().encode("utf-8") for keyword in rule.keywords if keyword),
            validator=NAMED_VALIDATORS[rule.validator] if rule.validator else None,
            allowlists=tuple(self._compile_allowlist(rule.id, al) for al in rule.all_allowlists()),
            fragment_keywords=rule.keyword_scope == "fragment" and bool(rule.keywords),
        )

    def _compile_allowlist(self, rule_id: str, allowlist: DlpAllowlist) -> _CompiledAllowlist:
        regexes: list[rx.CompiledPattern] = []
        for pattern in allowlist.regexes:
            try:
                regexes.append(self._compile(pattern))
            except rx.PatternError as exc:
                if self.backend != "python":
                    raise ValueError(f"rule {rule_id!r}: allowlist regex {pattern!r}: {exc}") from None
                # An allowlist that cannot run safely only costs extra findings, never a missed secret.
                self.skipped.append((rule_id, f"allowlist regex dropped: {exc}"))
        return _CompiledAllowlist(
            regexes=tuple(regexes),
            stopwords=tuple(word.lower().encode("utf-8") for word in allowlist.stopwords),
            target=allowlist.target,
            condition=allowlist.condition,
        )

    def _build_hyperscan(self) -> list[int]:
        """Compile every rule Hyperscan accepts into one database; return the rules it refused."""
        hs = rx.hyperscan_module()
        # Both the per-rule probes and the combined database come from failcore's on-disk cache when
        # it holds them for exactly these inputs (failcore.dlp.hscache).
        compiles = hscache.accepted_expressions(
            [self._hs_expression(p) for p in self._rules], on_compile=self._on_compile
        )
        accepted = [index for index, ok in enumerate(compiles) if ok]
        refused = [index for index, ok in enumerate(compiles) if not ok]
        # Keywords of fragment-scoped rules are reported once each, so one pass also says which occur.
        owners: dict[bytes, list[int]] = defaultdict(list)
        for index in accepted:
            # (Fast path: only the gated rules'; the others are looked up when their rule matched.)
            if self._rules[index].fragment_keywords and (not self._fast or self._gated(index)):
                for keyword in self._rules[index].keywords:
                    owners[keyword].append(index)
        literals = list(owners)
        self._hs_keyword_owners = [owners[literal] for literal in literals]
        if self._fast:
            accepted = self._build_fast_paths(accepted)
        if accepted or self._hs_gated:
            expressions = [self._hs_expression(self._rules[i]) for i in accepted]
            expressions += [rx.pattern_bytes(rx.escaped_literal(literal)) for literal in literals]
            flags = [0] * len(accepted) + [hs.HS_FLAG_CASELESS | hs.HS_FLAG_SINGLEMATCH] * len(literals)
            # The same pass says where the first base64/hex-like run starts (none: no run to look for).
            self._hs_run_id = len(expressions)
            expressions.append(rx.pattern_bytes(dv.RUN_PATTERN))
            flags.append(hs.HS_FLAG_SINGLEMATCH)
            self._hs_db = hscache.compile_database(
                expressions, list(range(len(expressions))), flags, on_compile=self._on_compile
            )
            self._hs_rule_indexes = accepted
            if self._fast and not refused:
                rules, keywords = expressions[: len(accepted)], expressions[len(accepted) : -1]
                self._hs_line_db = self._line_database(rules, keywords)
        return refused

    def _line_database(self, rules: list[bytes], keywords: list[bytes]) -> Any:
        """The main database's rule expressions with `^` and `$` read at every line's start and end
        (HS_FLAG_MULTILINE), and its keywords, each reported once: for quiet_lines. None (quiet_lines
        never answers) when a rule anchors on the whole text's start or end (`\\A`, `\\z`, `\\Z`: a
        line of a text has other ones) or Hyperscan refuses them so."""
        hs = rx.hyperscan_module()
        if any(_WHOLE_TEXT_ANCHOR.search(expression) for expression in rules):
            return None
        flags = [hs.HS_FLAG_MULTILINE | hs.HS_FLAG_SINGLEMATCH] * len(rules)
        flags += [hs.HS_FLAG_CASELESS | hs.HS_FLAG_SINGLEMATCH] * len(keywords)
        try:
            return self._compile_database([*rules, *keywords], flags)
        except hs.error:
            return None

    def quiet_lines(self, text: bytes) -> bool:
        """True when `scan(text)` finds nothing and neither does `scan(line)` of any line of it (the
        bytes between two newlines, or the text's start or end: a header block's "name: value" read
        alone); False when that is not known (the text is then scanned as ever).

        One Hyperscan pass, with no Python per byte, answers for all of them. It is made over `text` as it
        is (so only when no JSON, percent or narrowed view of it or of a line of it is scanned: no `\\`,
        no `%`, no NUL, no BOM; failcore.dlp.wide) against `_hs_line_db`: every rule of the main database
        and every keyword there, with `^` and `$` also at each newline. A rule's match in a line alone is
        then a match in `text` at the same bytes: it reads only the line's bytes, and its assertions read
        the same there (`^` and `$` match at the line's ends and nowhere inside it, `\\b` sees a newline
        where the line had its ends, both not word characters); `^` and `$` without that flag match at a
        subset of those places, so `text` itself is quiet too. With no rule match and no keyword, a scan's
        hits can only come from its base64/hex-like runs decoded (`_runs_only`; no rule is on the keyword
        path when there is a line database), and a line's runs are `text`'s runs within it (a newline is
        not in their alphabet): when none decodes to a candidate, no scan of them has a hit. The same holds
        for any stretch of whole lines of `text` (from the start of one line to the end of a later one: a
        request's body, then its header block, read in one pass): its edges are `text`'s or a newline,
        where `^`, `$` and `\\b` read as at a text's ends; its runs are `text`'s runs within it."""
        database = self._hs_line_db
        if database is None or b"\\" in text or b"%" in text or b"\x00" in text or narrowed(text):
            return False  # (a NUL or a BOM: `text` or a line of it may be scanned narrowed too)
        if not self._hs_scan(database, text, _stop):
            return False  # a rule or keyword matched: scanned as ever
        runs = dv.find_runs(text)
        if len(runs) >= dv.MAX_RUNS:
            return False
        if dv.no_candidates(text, runs):  # (the usual request id or trace id: known without building)
            return True
        budget = [dv.MAX_CANDIDATES, dv.MAX_DECODED_BYTES]
        return next(dv.encoded_candidates(dv.RawView(text), runs, budget), None) is None

    def _hs_expression(self, prepared: _PreparedRule) -> bytes:
        expression = rx.hyperscan_expression(prepared.rule.regex)
        if self._fast:
            # The same match ends without a leading `[\w.-]{0,50}?`; a superset of them with long
            # character alternations merged (the confirm windows come from the rule's own regex).
            expression = rx.merge_char_alternations(rx.drop_optional_prefix(expression))
        return rx.pattern_bytes(expression)

    def _build_fast_paths(self, accepted: list[int]) -> list[int]:
        """Fast path, around the main database: a fragment-keyword rule with no literal for Hyperscan
        to anchor on (it would run an automaton over every byte) gets its own database, scanned only
        when one of its keywords occurs (gitleaks' own gating); the other rules' keywords leave the
        main database (short ones like `ey`, `sk` cost a lot there) for a database of their own, used
        only when a rule that matched has no keyword in its windows; confirm windows get tighter
        bounds where the rule's width allows. Returns the rules left for the main database."""
        hs = rx.hyperscan_module()
        kept: list[int] = []
        for index in accepted:
            prepared = self._rules[index]
            if self._gated(index):
                database = self._compile_database([self._hs_expression(prepared)], [0])
                self._hs_gated.append((index, database))
            else:
                kept.append(index)
        owners: dict[bytes, list[int]] = defaultdict(list)
        for index in accepted:
            prepared = self._rules[index]
            width = prepared.width
            if width >= rx.UNBOUNDED_WIDTH:  # often only a mid-pattern `(?i)` Python cannot parse
                width = rx.max_match_width(rx.without_inline_ignorecase(prepared.rule.regex))
            bound = rx.run_bound(prepared.rule.regex) if width >= rx.UNBOUNDED_WIDTH else None
            self._window_shapes[index] = (width, bound)
            if prepared.fragment_keywords:
                for keyword in prepared.keywords:
                    owners[keyword].append(index)
        if owners:
            literals = list(owners)
            self._hs_keywords = [owners[literal] for literal in literals]
            self._hs_keyword_db = self._compile_database(
                [rx.pattern_bytes(rx.escaped_literal(literal)) for literal in literals],
                [hs.HS_FLAG_CASELESS | hs.HS_FLAG_SINGLEMATCH] * len(literals),
            )
        return kept

    def _gated(self, index: int) -> bool:
        """A fragment-keyword rule with no literal at all for Hyperscan to anchor on."""
        prepared = self._rules[index]
        return prepared.fragment_keywords and rx.required_literal_length(prepared.rule.regex) == 0

    def _compile_database(self, expressions: list[bytes], flags: list[int]) -> Any:
        """One more Hyperscan database of the fast path (ids are the expressions' positions), through the
        on-disk cache like the main one."""
        return hscache.compile_database(
            expressions, list(range(len(expressions))), flags, on_compile=self._on_compile
        )

    def _build_keyword_prefilter(
        self, rule_indexes: list[int]
    ) -> tuple[rx.CompiledPattern | None, dict[bytes, list[int]]]:
        owners: dict[bytes, list[int]] = defaultdict(list)
        for index in rule_indexes:
            for keyword in self._rules[index].keywords:
                owners[keyword].append(index)
        if not owners:
            return None, {}
        literals = list(owners)
        # A longer keyword wins the alternation, so credit every keyword it contains as well.
        expanded = {
            literal: sorted({idx for other in literals if other in literal for idx in owners[other]})
            for literal in literals
        }
        return self._compile(rx.literal_alternation(literals)), expanded

    @property
    def hyperscan_refused(self) -> list[str]:
        """Rule ids the Hyperscan database could not hold (they run through the RE2 keyword path)."""
        if self.backend != "hyperscan":
            return []
        return [self._rules[i].rule.id for i in self._keyword_path_rules]

    def scan(self, data: bytes | str) -> list[Hit]:
        """Hits with offsets into `data` (UTF-8 bytes of it when text).

        Scanned as the reader decodes it: JSON string escapes decoded (instead of the raw text when
        there are any), plus percent-decoded and bounded base64/hex-unwrapped views; every hit's span
        is mapped back to the raw bytes that encode it. When several rules or copies of a rule hit the
        same span, each is reported, and a rule id reported twice keeps its most severe copy (so the
        stricter action wins). A text Python's JSON reader takes for UTF-16 or UTF-32 is also scanned
        narrowed to one byte a code unit (failcore.dlp.wide), its hits mapped back to the wide bytes."""
        buffer = utf8_bytes(data) if isinstance(data, str) else bytes(data)
        hits = self._scan(buffer)
        wide = narrowed(buffer)
        if wide is None:
            return hits
        found = {(hit.rule_id, hit.start, hit.end): hit for hit in hits}
        for hit in self._scan(wide.data):
            start, end = wide.span(hit.start, hit.end)
            other = found.get((hit.rule_id, start, end))
            if other is None or _rank(hit) > _rank(other):
                found[(hit.rule_id, start, end)] = replace(hit, start=start, end=end)
        return sorted(found.values(), key=lambda hit: (hit.start, hit.end, hit.rule_id))

    def _scan(self, buffer: bytes) -> list[Hit]:
        """`scan` of `buffer` as it is."""
        root = dv.RawView(buffer)
        base: dv.View = root
        decoded = dv.json_view(buffer)
        if decoded is not None:
            base = dv.JsonStringView(decoded[0], root, decoded[1])
        views: list[dv.View] = [base]
        percent = dv.percent_view(base.data)
        if percent is not None:
            views.append(dv.PercentView(percent[0], base, percent[1]))
        first: _HsPass | None = None
        if self._fast and self._hs_db is not None:
            # The base view's main Hyperscan pass, made here so that when it reports nothing (no rule's
            # match end, no keyword, no base64/hex-like run) and nothing else is scanned (no rule on the
            # keyword path, no percent view) the answer, no hit, is known without the rest of the
            # pipeline: most texts (a header block, a URL, a clean body) end here.
            first = self._hs_pass(self._hs_db, base.data, [MAX_PREFILTER_EVENTS])
            if first[0] == {} and not self._keyword_path_rules and percent is None:
                return []
        budget = [dv.MAX_CANDIDATES, dv.MAX_DECODED_BYTES]
        hits: dict[tuple[str, int, int], Hit] = {}
        base_scan = self._runs_only(base.data, first) if percent is None else None
        if base_scan is not None and not base_scan[2]:
            return []
        base_keywords: _Keywords | None = None
        index = 0
        while index < len(views):
            view = views[index]
            index += 1
            if view is base and base_scan is not None:
                found, keywords, runs = base_scan
            else:
                found, keywords, runs = self._scan_view(
                    view.data, base_keywords, first if view is base else None
                )
            if view is base:
                base_keywords = keywords
            if not isinstance(view, dv.SliceView):
                views.extend(dv.encoded_candidates(view, runs, budget))
            for hit in found:
                start, end = view.span(hit.start, hit.end)
                if end <= start:
                    continue
                key = (hit.rule_id, start, end)
                other = hits.get(key)
                if other is None or _rank(hit) > _rank(other):
                    hits[key] = replace(hit, start=start, end=end)
        return sorted(hits.values(), key=lambda hit: (hit.start, hit.end, hit.rule_id))

    def _runs_only(
        self, buffer: bytes, first: _HsPass | None
    ) -> tuple[list[Hit], _Keywords, list[Window]] | None:
        """`_scan_view(buffer, None, first)` when the main pass (`first`) reported nothing but where a
        base64/hex-like run starts and no rule is on the keyword path: no rule matched, so no hit and
        no keyword; what is left are the runs (empty: nothing more to scan). None otherwise."""
        ends = first[0] if first is not None else None
        if not ends or len(ends) != 1 or self._keyword_path_rules:
            return None
        run_ends = ends.get(self._hs_run_id)
        if run_ends is None:
            return None
        keywords = _Keywords(self, buffer, set(), self._exact_keywords, None)
        return [], keywords, dv.find_runs(buffer, min(run_ends) - dv.MIN_RUN)

    def _scan_view(
        self, buffer: bytes, inherited: _Keywords | None, first: _HsPass | None = None
    ) -> tuple[list[Hit], _Keywords, list[Window]]:
        """Hits in one buffer, which rules' keywords occur in it and its base64/hex-like runs. `first`:
        the main Hyperscan database's pass over `buffer`, when the caller made it."""
        windows, keywords, runs = self._candidate_windows(buffer, inherited, first)
        hits: list[Hit] = []
        for index, spans in windows.items():
            prepared = self._rules[index]
            if prepared.fragment_keywords and not keywords.has(index, spans):
                continue
            for window_start, window_end in merge_windows(spans):
                for match in prepared.pattern.finditer(buffer, window_start, window_end):
                    hit = self._confirm(prepared, buffer, match)
                    if hit is not None:
                        hits.append(hit)
        return hits, keywords, runs

    def _candidate_windows(
        self, buffer: bytes, inherited: _Keywords | None = None, first: _HsPass | None = None
    ) -> tuple[dict[int, list[Window]], _Keywords, list[Window]]:
        windows: dict[int, list[Window]] = defaultdict(list)
        keyword_rules: set[int] = set()
        keyword_path = self._keyword_path_rules
        # The fast path knows the keywords of the gated rules and of the keyword path from its passes;
        # the other rules' are looked up when they matched.
        exact = self._exact_keywords
        # Hyperscan's match ends are complete for the rules it holds: a rule it did not report
        # cannot match, so only the rules it refused go through the keyword path.
        first_run: int | None = 0
        if self._hs_db is not None:
            first_run = self._hyperscan_windows(buffer, windows, keyword_rules, inherited, first)
            if first_run is not None and first_run < 0:  # the event budget ran out
                windows.clear()
                keyword_rules.clear()
                keyword_path = list(range(len(self._rules)))
                exact = None
                first_run = 0
        self._keyword_windows(buffer, keyword_path, windows, keyword_rules)
        keywords = _Keywords(self, buffer, keyword_rules, exact, inherited)
        return windows, keywords, [] if first_run is None else dv.find_runs(buffer, first_run)

    def _hs_scan(self, database: Any, buffer: bytes, on_match: Callable[..., bool]) -> bool:
        """One Hyperscan pass (scans are serialised); False when `on_match` stopped it."""
        hs = rx.hyperscan_module()
        with self._lock:
            try:
                database.scan(buffer, match_event_handler=on_match)
            except hs.ScanTerminated:
                return False
        return True

    def _hs_pass(self, database: Any, buffer: bytes, budget: list[int]) -> _HsPass:
        """Every match end of one database's pass over `buffer`, by expression id (None when the event
        budget, shared by the passes over one buffer, ran out), and that budget."""
        ends: dict[int, list[int]] = defaultdict(list)

        def collect(hs_id: int, _start: int, end: int, _flags: int, _context: object) -> bool:
            ends[hs_id].append(end)
            budget[0] -= 1
            return budget[0] <= 0

        if not self._hs_scan(database, buffer, collect) or budget[0] <= 0:
            return None, budget
        return ends, budget

    def _hyperscan_windows(
        self,
        buffer: bytes,
        windows: dict[int, list[Window]],
        keyword_rules: set[int],
        inherited: _Keywords | None = None,
        first: _HsPass | None = None,
    ) -> int | None:
        """Collect confirm windows from match ends (`first`: the main database's pass, when the caller
        made it). Returns where the first base64/hex-like run starts (None: there is none), or -1 when
        the event budget ran out."""
        if first is None:
            first = self._hs_pass(self._hs_db, buffer, [MAX_PREFILTER_EVENTS])
        found, budget = first
        if found is None:
            return -1
        ends = found
        rule_count = len(self._hs_rule_indexes)
        run_ends = ends.pop(self._hs_run_id, None)
        by_rule: list[tuple[int, list[int]]] = []
        for hs_id, rule_ends in ends.items():
            if hs_id >= rule_count:
                keyword_rules.update(self._hs_keyword_owners[hs_id - rule_count])
            else:
                by_rule.append((self._hs_rule_indexes[hs_id], rule_ends))
        # Gated rules run only where one of their keywords occurs (here or in the buffer decoded from).
        for index, database in self._hs_gated:
            if index in keyword_rules or (inherited is not None and inherited.has(index)):
                gated = self._hs_pass(database, buffer, budget)[0]
                if gated is None:
                    return -1
                by_rule.append((index, gated.pop(0, [])))
        for index, rule_ends in by_rule:
            width, bound = self._window_shapes.get(index, (self._rules[index].width, None))
            target = windows[index]
            if width < rx.UNBOUNDED_WIDTH:
                target.extend((max(0, end - width), end) for end in rule_ends)
            elif bound is not None and len(rule_ends) <= MAX_BOUNDED_ENDS:
                target.extend((rx.run_bounded_start(buffer, end, *bound), end) for end in rule_ends)
            else:
                target.extend((0, end) for end in rule_ends)
        return None if run_ends is None else min(run_ends) - dv.MIN_RUN

    def _keyword_rules(self, buffer: bytes) -> set[int]:
        """Every fragment-keyword rule with a keyword in `buffer`, from the keyword database."""
        found: set[int] = set()

        def on_keyword(hs_id: int, _start: int, _end: int, _flags: int, _context: object) -> bool:
            found.update(self._hs_keywords[hs_id])
            return False

        self._hs_scan(self._hs_keyword_db, buffer, on_keyword)
        return found

    def _keyword_windows(
        self,
        buffer: bytes,
        rule_indexes: list[int],
        windows: dict[int, list[Window]],
        keyword_rules: set[int],
    ) -> None:
        if not rule_indexes:
            return
        wanted = set(rule_indexes)
        size = len(buffer)
        for index in rule_indexes:
            if not self._rules[index].keywords:
                windows[index].append((0, size))
        pattern, owners = self._keyword_pattern, self._keyword_owners
        if len(rule_indexes) > len(self._keyword_path_rules):
            pattern, owners = self._all_keywords()
        if pattern is None:
            return
        positions = keyword_positions(pattern, owners, buffer)
        for literal, spans in positions.items():
            for index in owners.get(literal, ()):
                keyword_rules.add(index)
                if index not in wanted:
                    continue
                width = self._rules[index].width
                target = windows[index]
                if width >= rx.UNBOUNDED_WIDTH or self._rules[index].fragment_keywords:
                    # gitleaks semantics: the keyword may be anywhere, so the rule runs everywhere.
                    target.append((0, size))
                    continue
                for start, end in spans:
                    target.append((max(0, start - width), min(size, end + width)))

    def _all_keywords(self) -> tuple[rx.CompiledPattern | None, dict[bytes, list[int]]]:
        """The keyword prefilter over every rule, for texts too busy for Hyperscan (built once)."""
        if self._keyword_all is None:
            self._keyword_all = self._build_keyword_prefilter(list(range(len(self._rules))))
        return self._keyword_all

    def _confirm(self, prepared: _PreparedRule, buffer: bytes, match: rx.MatchLike) -> Hit | None:
        match_start, match_end = match.span()
        if match_end <= match_start:
            return None
        matched = buffer[match_start:match_end]
        if prepared.keywords and not prepared.fragment_keywords:
            lowered = matched.lower()
            if not any(keyword in lowered for keyword in prepared.keywords):
                return None
        start, end = self._secret_span(prepared, match)
        secret = buffer[start:end]
        if not secret:
            return None
        rule = prepared.rule
        if prepared.validator is not None and not prepared.validator(secret.decode("latin-1")):
            return None
        if rule.entropy is not None and shannon_entropy(secret) < rule.entropy:
            return None
        if rule.require_digit and not any(48 <= byte <= 57 for byte in secret):
            return None
        if self._allowlisted(prepared, buffer, secret, matched, match_start, match_end):
            return None
        return Hit(
            rule_id=rule.id,
            severity=rule.severity,
            category=rule.category,
            start=start,
            end=end,
            preview=mask_preview(secret),
            fingerprint=fingerprint(secret, self._salt),
        )

    @staticmethod
    def _secret_span(prepared: _PreparedRule, match: rx.MatchLike) -> tuple[int, int]:
        group = prepared.rule.secret_group
        if group > 0:
            start, end = match.span(group)
            return (start, end) if start >= 0 else (0, 0)
        for candidate in range(1, prepared.pattern.groups + 1):
            start, end = match.span(candidate)
            if start >= 0 and end > start:
                return start, end
        return match.span()

    @staticmethod
    def _allowlisted(
        prepared: _PreparedRule,
        buffer: bytes,
        secret: bytes,
        matched: bytes,
        match_start: int,
        match_end: int,
    ) -> bool:
        for allowlist in prepared.allowlists:
            if allowlist.target == "match":
                target = matched
            elif allowlist.target == "line":
                line_start = buffer.rfind(b"\n", 0, match_start) + 1
                line_end = buffer.find(b"\n", match_end)
                target = buffer[line_start : line_end if line_end >= 0 else len(buffer)]
            else:
                target = secret
            checks: list[bool] = []
            if allowlist.regexes:
                checks.append(
                    any(next(iter(p.finditer(target)), None) is not None for p in allowlist.regexes)
                )
            if allowlist.stopwords:
                lowered = secret.lower()
                checks.append(any(word in lowered for word in allowlist.stopwords))
            if not checks:
                continue
            if all(checks) if allowlist.condition == "and" else any(checks):
                return True
        return False
