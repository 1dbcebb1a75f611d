"""DLP conformance on data nobody here wrote: gitleaks' own rule fixtures (tests/data/conformance/dlp,
MIT, see its LICENSE) and ordinary text found on this machine (stdlib source, package metadata, READMEs).

Each true-positive sample must be found both as plain text and inside a chat request (the JSON body an
LLM client sends, `messages[].content`); false-positive samples and ordinary text must stay quiet.
Expected values come from the fixtures themselves (`secret`, `kind`), not from failcore.

Run as a script to print the figures: `PYTHONPATH=. .venv/bin/python tests/test_dlp_conformance.py`.
"""

from __future__ import annotations

import functools
import json
import sys

import pytest

from failcore.dlp import DlpEngine, Hit, builtin_rules, import_gitleaks
from failcore.shipped import BUNDLED_GITLEAKS
from tests.dlp_corpus import Sample, chat_body, load_samples, ordinary_corpus

GITLEAKS_TOML = BUNDLED_GITLEAKS


def _secret_spans(body: bytes, secret: str, *, in_json: bool) -> list[tuple[int, int]]:
    needle = (json.dumps(secret)[1:-1] if in_json else secret).encode("utf-8")
    spans = []
    start = body.find(needle)
    while start >= 0:
        spans.append((start, start + len(needle)))
        start = body.find(needle, start + 1)
    return spans


def secret_hits(hits: list[Hit]) -> list[Hit]:
    return [hit for hit in hits if hit.category == "secret"]


def found(engine: DlpEngine, sample: Sample, *, in_json: bool) -> bool:
    body = chat_body(sample.text) if in_json else sample.text.encode("utf-8")
    hits = secret_hits(engine.scan(body))
    if not sample.secret:
        return bool(hits)
    spans = _secret_spans(body, sample.secret, in_json=in_json)
    if not spans:  # the secret is written differently in the text (e.g. wrapped): any hit counts
        return bool(hits)
    return any(hit.start < end and start < hit.end for hit in hits for start, end in spans)


def fired(engine: DlpEngine, sample: Sample, *, in_json: bool, any_rule: bool = False) -> bool:
    """gitleaks labels a sample false-positive for one rule: it fires when that rule, or any built-in
    rule, reports it (`any_rule`: any rule at all, even one for which the sample is a real secret)."""
    body = chat_body(sample.text) if in_json else sample.text.encode("utf-8")
    hits = secret_hits(engine.scan(body))
    if not any_rule:
        hits = [hit for hit in hits if hit.rule_id == sample.rule or hit.rule_id in builtin_ids()]
    if in_json:
        # The chat wrapper itself ("gpt-4o", "Be brief.") is not part of the sample.
        offset = body.index(b'"role": "user", "content": ') + len(b'"role": "user", "content": ')
        hits = [hit for hit in hits if hit.end > offset]
    return bool(hits)


@functools.cache
def builtin_ids() -> frozenset[str]:
    return frozenset(rule.id for rule in builtin_rules())


@functools.cache
def full_engine() -> DlpEngine:
    return DlpEngine(builtin_rules() + import_gitleaks(GITLEAKS_TOML).rules, salt=b"conformance")


@functools.cache
def builtin_engine() -> DlpEngine:
    return DlpEngine(builtin_rules(), salt=b"conformance")


def rates(engine: DlpEngine, samples: list[Sample]) -> dict[str, float]:
    tps = [s for s in samples if s.kind == "tp"]
    fps = [s for s in samples if s.kind == "fp"]
    return {
        "recall_plain": sum(found(engine, s, in_json=False) for s in tps) / len(tps),
        "recall_json": sum(found(engine, s, in_json=True) for s in tps) / len(tps),
        "fp_plain": sum(fired(engine, s, in_json=False) for s in fps) / len(fps),
        "fp_json": sum(fired(engine, s, in_json=True) for s in fps) / len(fps),
        "fp_any_rule": sum(fired(engine, s, in_json=False, any_rule=True) for s in fps) / len(fps),
    }


def ordinary_hits_per_mb(engine: DlpEngine) -> tuple[float, float, list[Hit]]:
    docs = ordinary_corpus()
    hits: list[Hit] = []
    for doc in docs:
        hits += secret_hits(engine.scan(doc))
    megabytes = sum(map(len, docs)) / 1e6
    return len(hits) / megabytes, megabytes, hits


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    loaded = load_samples()
    assert len(loaded) > 6000
    return loaded


@pytest.mark.parametrize("in_json", [False, True], ids=["plain", "chat-json"])
def test_gitleaks_fixture_recall(samples: list[Sample], in_json: bool) -> None:
    engine = full_engine()
    tps = [s for s in samples if s.kind == "tp"]
    missed = [s for s in tps if not found(engine, s, in_json=in_json)]
    recall = 1 - len(missed) / len(tps)
    assert recall >= 0.98, (recall, [(s.rule, s.text[:80]) for s in missed[:20]])


@pytest.mark.parametrize("in_json", [False, True], ids=["plain", "chat-json"])
def test_gitleaks_false_positive_fixtures_stay_quiet(samples: list[Sample], in_json: bool) -> None:
    engine = full_engine()
    fps = [s for s in samples if s.kind == "fp"]
    noisy = [s for s in fps if fired(engine, s, in_json=in_json)]
    assert len(noisy) / len(fps) <= 0.05, [(s.rule, s.text[:80]) for s in noisy]


@pytest.mark.parametrize(
    "rule", ["airtable-personnal-access-token", "facebook-access-token", "sourcegraph-access-token"]
)
def test_rules_keyed_outside_the_match_fire(samples: list[Sample], rule: str) -> None:
    engine = full_engine()
    tps = [s for s in samples if s.kind == "tp" and s.rule == rule]
    assert tps
    for sample in tps:
        hits = engine.scan(sample.text)
        assert rule in {hit.rule_id for hit in hits}, sample.text[:200]


def test_ordinary_text_is_quiet() -> None:
    per_mb, megabytes, hits = ordinary_hits_per_mb(full_engine())
    assert megabytes >= 5
    assert per_mb <= 0.3, sorted({hit.rule_id for hit in hits})


def main() -> int:
    samples = load_samples()
    for label, engine in (("builtin+gitleaks", full_engine()), ("builtin", builtin_engine())):
        figures = rates(engine, samples)
        per_mb, megabytes, hits = ordinary_hits_per_mb(engine)
        rules: dict[str, int] = {}
        for hit in hits:
            rules[hit.rule_id] = rules.get(hit.rule_id, 0) + 1
        print(
            f"{label:<17} recall plain {figures['recall_plain']:.1%} json {figures['recall_json']:.1%}  "
            f"fp fired plain {figures['fp_plain']:.1%} json {figures['fp_json']:.1%} "
            f"(any rule {figures['fp_any_rule']:.1%})  "
            f"ordinary {per_mb:.2f} hits/MB over {megabytes:.1f} MB {rules}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
