"""The Hyperscan fast path (gated rules, keywords looked up when a rule matched, leading optional
prefixes dropped, tighter confirm windows) reports exactly what the plain path reports.

The plain path (`fast_paths=False`) is the scan as it was before the fast path: every rule and every
fragment keyword in one database, windows from the rule's plain width. Both run on data nobody here
wrote (gitleaks' own fixtures, plain and inside a chat request; ordinary text from this machine) and on
shapes built to reach each fast-path branch.
"""

from __future__ import annotations

import base64
import functools
import random
import secrets

import pytest

from failcore.dlp import DlpEngine, builtin_rules, import_gitleaks
from failcore.dlp import engine as engine_module
from failcore.dlp import regex_backend as rx
from failcore.shipped import BUNDLED_GITLEAKS
from tests.dlp_corpus import chat_body, load_samples, ordinary_corpus

pytestmark = pytest.mark.skipif(not rx.hyperscan_available(), reason="hyperscan not installed")

SALT = b"fastpath"


@functools.cache
def engines() -> tuple[DlpEngine, DlpEngine]:
    rules = builtin_rules() + import_gitleaks(BUNDLED_GITLEAKS).rules
    return DlpEngine(rules, salt=SALT), DlpEngine(rules, salt=SALT, fast_paths=False)


def rule_index(engine: DlpEngine, rule_id: str) -> int:
    return next(i for i, prepared in enumerate(engine._rules) if prepared.rule.id == rule_id)


def assert_same(data: bytes | str) -> list[str]:
    fast, plain = engines()
    hits = fast.scan(data)
    assert hits == plain.scan(data), data[:200]
    return [hit.rule_id for hit in hits]


def test_both_paths_hold_the_same_rules_in_hyperscan() -> None:
    fast, plain = engines()
    assert fast.hyperscan_refused == plain.hyperscan_refused
    # The fast path really differs: gated rules left the main database.
    gated = {fast._rules[index].rule.id for index, _ in fast._hs_gated}
    assert "sourcegraph-access-token" in gated
    assert len(fast._hs_rule_indexes) + len(gated) == len(plain._hs_rule_indexes)


def test_same_findings_on_gitleaks_fixtures_plain_and_in_chat() -> None:
    fast, plain = engines()
    samples = load_samples()
    assert len(samples) > 6000
    differing = []
    found = 0
    for sample in samples:
        for data in (sample.text.encode(), chat_body(sample.text)):
            hits = fast.scan(data)
            found += bool(hits)
            if hits != plain.scan(data):
                differing.append((sample.rule, sample.text[:80]))
    assert not differing, differing[:10]
    assert found > 10_000  # the comparison saw findings, not two empty lists


def test_same_findings_on_ordinary_text() -> None:
    fast, plain = engines()
    docs = ordinary_corpus(2_000_000)
    assert [fast.scan(doc) for doc in docs] == [plain.scan(doc) for doc in docs]


def _random_token(rng: random.Random, alphabet: str, size: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(size))


def test_gated_rule_runs_when_its_keyword_is_here_or_in_the_decoded_parent() -> None:
    token = secrets.token_hex(20)
    # No keyword anywhere: the gated rule is not run at all (and the plain path drops its hits).
    assert "sourcegraph-access-token" not in assert_same(f"ref {token} done")
    assert "sourcegraph-access-token" in assert_same(f"sourcegraph ref {token} done")
    # The token base64-wrapped, its keyword only in the text around it (the decoded view inherits it).
    wrapped = base64.b64encode(f"value {token} end".encode()).decode()
    assert "sourcegraph-access-token" in assert_same(f"sourcegraph config: {wrapped} ok")
    assert "sourcegraph-access-token" not in assert_same(f"config: {wrapped} ok")


def test_keyword_outside_every_window_is_found_in_the_whole_buffer() -> None:
    fast, _plain = engines()
    index = rule_index(fast, "airtable-personnal-access-token")
    assert index not in {gated for gated, _ in fast._hs_gated}  # looked up, not gated
    token = "pat" + secrets.token_hex(7)[:14] + "." + secrets.token_hex(32)
    far = "airtable " + "lorem ipsum " * 400
    assert "airtable-personnal-access-token" in assert_same(f"{far} {token} end")
    assert "airtable-personnal-access-token" not in assert_same(f"{'lorem ipsum ' * 400} {token} end")


def test_generic_rule_with_long_values_and_many_matches() -> None:
    """generic-api-key's width is unbounded: the fast path bounds where each match can start from the
    run in front of its end; long runs, runs right at the start and many matches fall back."""
    rng = random.Random(3)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
    for size in (12, 200, 300, 5_000, 70_000):
        value = _random_token(rng, alphabet, size) + "9"
        for prefix in ("", "x", "lorem ipsum " * 50):
            assert_same(f"{prefix}api_key = {value}\nnext line")
            assert_same(f"{prefix}{value[:40]}token: {value}\n")
    many = "\n".join(f"secret_{i} = {_random_token(rng, alphabet, 30)}9" for i in range(400))
    assert len(assert_same(many)) > 100
    assert len(assert_same(chat_body(many))) > 100


def test_fallbacks_give_the_same_findings(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    text = " ".join(
        [
            "sourcegraph",
            secrets.token_hex(20),
            "api_key = " + _random_token(rng, "abcdef0123456789", 40),
            "ghp_" + _random_token(rng, "abcdefghijklmnopqrstuvwxyz0123456789", 36),
            "airtable " + "pat" + secrets.token_hex(7)[:14] + "." + secrets.token_hex(32),
        ]
    )
    expected = assert_same(text)
    # The event budget running out sends every rule through the keyword path, on both paths.
    monkeypatch.setattr(engine_module, "MAX_PREFILTER_EVENTS", 2)
    assert assert_same(text) == expected
    monkeypatch.setattr(engine_module, "MAX_PREFILTER_EVENTS", 200_000)
    # Too many ends of an unbounded rule: its window starts at 0 again.
    monkeypatch.setattr(engine_module, "MAX_BOUNDED_ENDS", 0)
    assert assert_same(text) == expected


def _match_ends(database: object, text: bytes) -> set[tuple[int, int]]:
    ends: set[tuple[int, int]] = set()

    def on_match(hs_id: int, _start: int, end: int, _flags: int, _context: object) -> None:
        ends.add((hs_id, end))

    database.scan(text, match_event_handler=on_match)  # type: ignore[attr-defined]
    return ends


def _match_ends(database: object, text: bytes) -> set[tuple[int, int]]:
    ends: set[tuple[int, int]] = set()

    def on_match(hs_id: int, _start: int, end: int, _flags: int, _context: object) -> None:
        ends.add((hs_id, end))

    database.scan(text, match_event_handler=on_match)  # type: ignore[attr-defined]
    return ends


def _compile(expressions: list[str]) -> object:
    hs = rx.hyperscan_module()
    database = hs.Database()
    database.compile(
        expressions=[rx.pattern_bytes(e) for e in expressions],
        ids=list(range(len(expressions))),
        flags=[0] * len(expressions),
    )
    return database


def test_rewritten_expressions_report_every_match_end() -> None:
    """Hyperscan reports the same (rule, end) pairs with and without the leading optional items, and
    at least those with long character alternations merged, on gitleaks' true positives."""
    rules = builtin_rules() + import_gitleaks(BUNDLED_GITLEAKS).rules
    original = [rx.hyperscan_expression(rule.regex) for rule in rules]
    stripped = [rx.drop_optional_prefix(expression) for expression in original]
    merged = [rx.merge_char_alternations(expression) for expression in stripped]
    assert sum(a != b for a, b in zip(original, stripped, strict=True)) > 50
    assert sum(a != b for a, b in zip(stripped, merged, strict=True)) >= 1
    databases = [_compile(original), _compile(stripped), _compile(merged)]
    samples = [s for s in load_samples() if s.kind == "tp"]
    texts = [s.text.encode() for s in samples] + [chat_body(s.text) for s in samples[::7]]
    reported = 0
    for text in texts:
        ends = [_match_ends(database, text) for database in databases]
        assert ends[0] == ends[1], text[:120]
        assert ends[1] <= ends[2], text[:120]
        reported += len(ends[0])
    assert reported > 1000


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (r"(?i)[\w.-]{0,50}?(?:key)=x", r"(?i)(?:key)=x"),
        (r"[\w.-]{0,50}?(?i:[\w.-]{0,50}?(?:cohere)x)y", r"(?i:(?:cohere)x)y"),
        (r"[a-z]*\d+", r"\d+"),
        (r"(?:[a-z]{0,3}x)+y", r"(?:[a-z]{0,3}x)+y"),  # a repeated group: unchanged
        (r"[a-z]{0,5}", r"[a-z]{0,5}"),  # nothing would be left
        (r"[a-z]{0,5}x?", r"[a-z]{0,5}x?"),  # what is left could match empty
        (r"[a-z]{1,5}x", r"[a-z]{1,5}x"),  # not optional
    ],
)
def test_drop_optional_prefix(expression: str, expected: str) -> None:
    assert rx.drop_optional_prefix(expression) == expected


def test_merge_char_alternations() -> None:
    generic = r"(?i)key[ ]{0,3}=([\w.=-]{10,150}|[a-z0-9][a-z0-9+/]{11,}={0,3})(?:\s|$)"
    merged = rx.merge_char_alternations(generic)
    assert merged.startswith(r"(?i)key[ ]{0,3}=(?:[") and merged.endswith(r"]{10,})(?:\s|$)")
    # Every string either branch accepts, the merged repeat accepts.
    compiled = rx.compile_re2(merged)
    for value in ("abcdefghij", "A1b2C3d4e5f6+/==", "x.y=z-w_v.u", "Zz" * 80):
        assert next(iter(compiled.finditer(f"key ={value} ".encode())), None) is not None, value
    # Kept: a branch with a literal of its own (its anchor), short branches, other shapes.
    for kept in (
        r"(ABSK[A-Za-z0-9+/]{109,269}|bedrock-[A-Za-z0-9]{20,1000})",
        r"x([a-z]{10,20}|[0-9]{10,20})",
        r"x(?:[a-z]+|(?:ab)+)",
    ):
        assert rx.merge_char_alternations(kept) == kept


def test_required_literal_length() -> None:
    assert rx.required_literal_length(r"(?i)\b([a-f0-9]{40})\b") == 0
    assert rx.required_literal_length(r"ghp_[A-Za-z0-9]{36}") == 4
    assert rx.required_literal_length(r"(?:sgp_[a-f]{40}|[a-f]{40})") == 0
    assert rx.required_literal_length(r"\b(p8e-(?i)[a-z0-9]{32})") == 4  # Go's mid-pattern (?i)


def test_run_bound_is_a_lower_bound_of_every_match_start() -> None:
    """Every match RE2 finds (from the start of the text) starts at or after the bound computed from
    its end, on random texts built from the pattern's own pieces."""
    patterns = [
        r"(?i)[\w.-]{0,50}?(?:key|token)[ \t]{0,3}[=:][ ]{0,2}([a-z0-9][a-z0-9+/]{11,}={0,3})(?:[\s;]|$)",
        r"ops_eyJ[a-zA-Z0-9+/]{25,}={0,3}",
        r"xoxb-[0-9]{3}-[0-9]{3}[a-zA-Z0-9-]*",
        r"\b(EAA[MC](?i)[a-z0-9]{20,})(?:[\x60'\"\s;]|$)",
    ]
    rng = random.Random(9)
    pieces = [
        "key",
        "token",
        "=",
        ": ",
        " ",
        "\n",
        ";",
        "ops_eyJ",
        "xoxb-123-456",
        "EAAM",
        "-",
        "/",
        "+",
        "==",
    ]
    for pattern in patterns:
        bound = rx.run_bound(pattern)
        assert bound is not None, pattern
        compiled = rx.compile_re2(pattern)
        for _ in range(300):
            parts = [rng.choice(pieces) for _ in range(rng.randint(1, 12))]
            parts += [_random_token(rng, "abcXYZ019+/", rng.choice((3, 12, 40, 300)))]
            rng.shuffle(parts)
            text = "".join(parts).encode()
            for match in compiled.finditer(text):
                start, end = match.span()
                assert rx.run_bounded_start(text, end, *bound) <= start, (pattern, text)
    assert rx.run_bound(r"[a-z]+x[0-9]+") is None  # two unbounded parts
    assert rx.run_bound(r"(?:ab)+c") is None  # an unbounded group
    assert rx.run_bound(r"[[:alnum:]]+") is None  # Go syntax Python reads differently
