"""A DLP engine's start-up: its pattern analysis cached on disk, and the exact RE2-backed interim engine
that serves while a first start compiles the Hyperscan databases (failcore.dlp.hscache, .pending).

Findings are compared on gitleaks' own rule fixtures (tests/data/conformance/dlp, MIT), scanned with
policies/examples/dlp.yaml's rules (failcore's, gitleaks' bundled rule set, a custom one): data and rules
nobody here wrote.
"""

from __future__ import annotations

import contextlib
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from failcore.dlp import DlpEngine, builtin_rules, hscache
from failcore.dlp import regex_backend as rx
from failcore.dlp import scanner as scanner_module
from failcore.dlp.pending import PendingEngine, engine_ready
from failcore.dlp.rules import policy_rules
from failcore.policy.load import load_policy
from tests.dlp_corpus import chat_body, load_samples

pytestmark = pytest.mark.skipif(
    not (rx.hyperscan_available() and rx.re2_available()), reason="needs hyperscan and google-re2"
)

ROOT = Path(__file__).parent.parent
DLP_POLICY = ROOT / "policies" / "examples" / "dlp.yaml"
SALT = b"startup-cache-test"
GITHUB_TOKEN = "ghp_" + "Zk29fLq81MxnT7RwPq4sVb8NcD3eHj6mKo0u"


def small_rules() -> tuple:
    """A few built-in rules, for the tests about mechanics (each cold build compiles them)."""
    keep = {"aws-access-key-id", "github-pat", "slack-bot-token", "private-key", "jwt"}
    return tuple(rule for rule in builtin_rules() if rule.id in keep)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "failcore-home"
    monkeypatch.setenv("FAILCORE_HOME", str(path))
    monkeypatch.delenv(hscache.ENV_SWITCH, raising=False)
    return path


@pytest.fixture(scope="module")
def dlp_rules() -> tuple:
    rules = policy_rules(load_policy(DLP_POLICY))
    assert rules is not None and len(rules) > 300
    return rules


@pytest.fixture
def empty_memo() -> Iterator[None]:
    """This process has analysed no pattern yet (as a fresh proxy); restored afterwards."""
    saved = {name: dict(table) for name, table in rx._memo.items()}
    for table in rx._memo.values():
        table.clear()
    yield
    for name, table in rx._memo.items():
        table.clear()
        table.update(saved[name])


def fixture_texts() -> list[bytes]:
    samples = load_samples()
    return [s.text.encode() for s in samples] + [chat_body(s.text) for s in samples[::7]]


def findings(engine: Any, texts: list[bytes]) -> list[list[tuple[str, int, int, str, str]]]:
    return [[(h.rule_id, h.start, h.end, h.severity, h.fingerprint) for h in engine.scan(t)] for t in texts]


def computed_analysis(rules: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[DlpEngine, int]:
    """An engine, and how many pattern analyses its build computed (rather than found)."""
    uses: list[rx.AnalysisUse] = []
    real = rx.recording_analysis

    @contextlib.contextmanager
    def recording() -> Iterator[rx.AnalysisUse]:
        with real() as use:
            uses.append(use)
            yield use

    monkeypatch.setattr(rx, "recording_analysis", recording)
    engine = DlpEngine(rules, salt=SALT)
    monkeypatch.setattr(rx, "recording_analysis", real)
    return engine, uses[-1].computed


def test_a_warm_build_analyses_no_pattern_and_finds_the_same(
    home: Path, empty_memo: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = builtin_rules()
    cold, computed = computed_analysis(rules, monkeypatch)
    assert computed > len(rules)  # every rule's regex was parsed at least once
    for table in rx._memo.values():
        table.clear()  # a new process
    warm, computed = computed_analysis(rules, monkeypatch)
    assert computed == 0, "the stored analysis is used"
    texts = fixture_texts()[::10]
    found = findings(cold, texts)
    assert sum(map(len, found)) > 100  # the fixtures are secrets: the comparison is not vacuous
    assert findings(warm, texts) == found
    for path in (home / hscache.CACHE_DIR_NAME).iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_analysis_entry_is_keyed_by_the_analysing_code_and_the_patterns(
    home: Path, empty_memo: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = small_rules()
    computed_analysis(rules, monkeypatch)
    patterns = [rule.regex for rule in rules]
    key = hscache.analysis_key(patterns)
    assert hscache.read_entry(key) is not None
    assert hscache.analysis_key(patterns[1:]) != key
    assert hscache.analysis_key(list(reversed(patterns))) != key
    # Another version of the analysing module (or of Python) never reads this entry.
    monkeypatch.setattr(hscache, "_analysis_code", lambda: b"other code")
    assert hscache.analysis_key(patterns) != key
    for table in rx._memo.values():
        table.clear()
    _, computed = computed_analysis(rules, monkeypatch)
    assert computed > 0


@pytest.mark.parametrize(
    "payload", [b"not json", b'{"a": 1}', b'[["no_such_function", "x", 1]]', b"[[1, 2]]"]
)
def test_an_unusable_analysis_entry_is_discarded_and_recomputed(
    home: Path, empty_memo: None, monkeypatch: pytest.MonkeyPatch, payload: bytes
) -> None:
    rules = small_rules()
    reference, _ = computed_analysis(rules, monkeypatch)
    key = hscache.analysis_key([rule.regex for rule in rules])
    hscache.write_entry(key, payload)  # checksummed and private: only its content is wrong
    for table in rx._memo.values():
        table.clear()
    engine, computed = computed_analysis(rules, monkeypatch)
    assert computed > 0
    texts = fixture_texts()[::40]
    assert findings(engine, texts) == findings(reference, texts)
    stored = hscache.read_entry(key)
    assert stored is not None and stored != payload, "rewritten by the build"


@pytest.mark.parametrize("result", ["wide", -1, True, [1, 2]])
def test_an_analysis_result_of_the_wrong_shape_is_discarded_and_recomputed(
    home: Path, empty_memo: None, monkeypatch: pytest.MonkeyPatch, result: object
) -> None:
    """An entry naming the rule set's own patterns with a string for a width: preloaded, it made every
    engine build fail (a TypeError), and with fail_open traffic passed unscanned (found in review)."""
    rules = small_rules()
    reference, _ = computed_analysis(rules, monkeypatch)
    key = hscache.analysis_key([rule.regex for rule in rules])
    crafted = [["max_match_width", rule.regex, result] for rule in rules]
    hscache.write_entry(key, orjson.dumps(crafted))
    for table in rx._memo.values():
        table.clear()
    engine, computed = computed_analysis(rules, monkeypatch)
    assert computed > 0
    texts = fixture_texts()[::40]
    assert findings(engine, texts) == findings(reference, texts)


def test_the_re2_backend_finds_exactly_what_hyperscan_finds_with_gitleaks_rules(dlp_rules: tuple) -> None:
    # The interim engine's claim to be exact: same rule ids, spans, severities and fingerprints.
    hyperscan = DlpEngine(dlp_rules, backend="hyperscan", salt=SALT)
    re2 = DlpEngine(dlp_rules, backend="re2", salt=SALT)
    texts = fixture_texts()[::3]
    found = findings(hyperscan, texts)
    assert sum(map(len, found)) > 1000
    assert findings(re2, texts) == found


@pytest.mark.parametrize(
    ("secret", "rule"),
    [
        # `s.` (a keyword of another rule) ends inside `.atlasv1.`, hiding it from one alternation pass.
        (
            "Qw7Rt2Yu9Pk4Ls.atlasv1."
            + "q7w8e9r0t1y2u3i4o5p6a7s8d9f0g1h2j3k4l5"
            + "z6x7c8v9b0n1m2q3w4e5r6t7y8u9",
            "terraform",
        ),
        # `a3t` hides `t3blbkfj`.
        ("sk-" + "Qw7Rt2Yu9Pk4LmNb3c" + "A3T3BlbkFJ" + "Zx8Cv7Bn6Mq5Wr4Ty3Ui", "openai"),
    ],
)
def test_a_keyword_overlapping_another_still_opens_its_rule(dlp_rules: tuple, secret: str, rule: str) -> None:
    """The RE2 path finds keywords with one alternation, which reports no overlapping matches: a rule
    whose keyword began inside another keyword's match got no window (found in review)."""
    text = f'{{"prompt": "use {secret} please"}}'
    hyperscan = DlpEngine(dlp_rules, backend="hyperscan", salt=SALT)
    re2 = DlpEngine(dlp_rules, backend="re2", salt=SALT)
    found = findings(hyperscan, [text])
    assert any(rule in hit[0] for hit in found[0]), found
    assert findings(re2, [text]) == found


def test_the_interim_engine_serves_while_the_rules_compile_then_is_replaced(dlp_rules: tuple) -> None:
    release = threading.Event()

    def build() -> DlpEngine:
        pending.compiling()  # as DlpEngine's on_compile does before a compile
        assert release.wait(60)
        return DlpEngine(dlp_rules, backend="hyperscan", salt=SALT)

    pending = PendingEngine(
        build, interim=lambda: DlpEngine(dlp_rules, backend="re2", salt=SALT), start=False
    )
    pending.start()
    try:
        text = f"token {GITHUB_TOKEN}\n"
        hits = pending.scan(text)  # does not wait for `release`
        assert "github-pat" in {hit.rule_id for hit in hits}
        assert pending.ready and engine_ready(pending) and pending.interim
        assert pending.backend == "re2"
        with pytest.raises(TimeoutError):
            pending.result(timeout=0.01)  # the full engine is still compiling
    finally:
        release.set()
    full = pending.result(timeout=120)
    assert pending.backend == "hyperscan" and not pending.interim
    assert pending.scan(text) == hits == full.scan(text)


def test_no_interim_engine_when_nothing_compiles() -> None:
    release = threading.Event()
    interim_built = threading.Event()

    def build() -> DlpEngine:
        assert release.wait(60)
        return DlpEngine(small_rules(), salt=SALT)

    def interim() -> DlpEngine:
        interim_built.set()
        return DlpEngine(small_rules(), backend="re2", salt=SALT)

    pending = PendingEngine(build, interim=interim)
    assert not pending.ready and not pending.interim
    release.set()
    assert pending.backend == "hyperscan"
    assert not interim_built.is_set()


def test_a_first_start_scans_with_the_interim_engine_until_the_databases_are_compiled(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DlpScanner's engine on an empty cache: the build reports its compile, the interim engine answers
    while the compile is held, and the Hyperscan engine takes over afterwards."""
    release = threading.Event()
    real = hscache.compile_database

    def held(*args: Any, **kw: Any) -> Any:
        assert release.wait(120)
        return real(*args, **kw)

    monkeypatch.setattr(hscache, "compile_database", held)
    engine = scanner_module._engine_for(
        small_rules(), SALT + b"-first-start"
    )  # no engine of this process fits
    assert isinstance(engine, PendingEngine)
    text = f"token {GITHUB_TOKEN}\n"
    try:
        hits = engine.scan(text)
        assert engine.backend == "re2"
        assert [hit.rule_id for hit in hits] == ["github-pat"]
    finally:
        release.set()
    engine.result(timeout=300)
    assert engine.backend == "hyperscan"
    assert engine.scan(text) == hits
