"""Import of the upstream gitleaks rule set (failcore/data/gitleaks, MIT licensed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from failcore.dlp import DlpEngine, GitleaksImport, import_gitleaks
from failcore.dlp.gitleaks import import_gitleaks_config, translate_go_regex
from failcore.dlp.regex_backend import PatternError

GITLEAKS_TOML = Path(__file__).parent.parent / "failcore" / "data" / "gitleaks" / "gitleaks.toml"
PATH_REASON = "rule requires a file path match; HTTP traffic has no file path"
VARIED = "Zk29fLq81MxnT7RwPq4sVb8NcD3eHj6mKo0u"  # 36 chars, high entropy


@pytest.fixture(scope="module")
def imported() -> GitleaksImport:
    return import_gitleaks(GITLEAKS_TOML)


@pytest.fixture(scope="module")
def engines(imported: GitleaksImport) -> dict[str, DlpEngine]:
    return {
        backend: DlpEngine(imported.rules, backend=backend, salt=b"s") for backend in ("hyperscan", "re2")
    }


def test_counts_and_skipped_ids_are_pinned(imported: GitleaksImport) -> None:
    assert len(imported.rules) == 217
    assert imported.skipped == [
        ("freemius-secret-key", PATH_REASON),
        ("hashicorp-tf-password", PATH_REASON),
        ("kubernetes-secret-yaml", PATH_REASON),
        ("nuget-config-password", PATH_REASON),
        ("pkcs12-file", PATH_REASON),
    ]
    assert all(rule.source == "gitleaks" for rule in imported.rules)
    assert len({rule.id for rule in imported.rules}) == 217


@pytest.mark.parametrize("backend", ["hyperscan", "re2"])
@pytest.mark.parametrize(
    ("rule_id", "text", "secret"),
    [
        ("github-pat", "token ", "ghp_" + VARIED),
        ("aws-access-token", "id ", "AKIA" + "QWERTYUIOPASDFGH"),
        ("slack-bot-token", "", "xoxb-" + "1234567890-1234567890123-" + VARIED[:24]),
        ("gcp-api-key", "key=", "AIza" + "Sy" + VARIED[:33]),
    ],
)
def test_well_known_rules_detect_examples(
    engines: dict[str, DlpEngine],
    backend: str,
    rule_id: str,
    text: str,
    secret: str,
) -> None:
    engine = engines[backend]
    full = text + secret + " \n"
    hits = [hit for hit in engine.scan(full) if hit.rule_id == rule_id]
    assert [full.encode()[hit.start : hit.end] for hit in hits] == [secret.encode()]


def test_hyperscan_holds_every_loaded_rule(engines: dict[str, DlpEngine]) -> None:
    engine = engines["hyperscan"]
    assert engine.hyperscan_refused == []


def test_rule_allowlist_and_global_stopwords_apply(engines: dict[str, DlpEngine]) -> None:
    engine = engines["re2"]
    # aws-access-token allowlists secrets ending in EXAMPLE.
    assert "aws-access-token" not in {
        hit.rule_id for hit in engine.scan("id " + "AKIA" + "IOSFODNN7" + "EXAMPLE")
    }


def test_translation_of_go_syntax() -> None:
    assert translate_go_regex(r"abc\z") == "abc$"
    assert translate_go_regex(r"a\\z") == r"a\\z"
    assert translate_go_regex(r"[[:alpha:]_]+") == "[A-Za-z_]+"
    with pytest.raises(PatternError, match="non-ASCII"):
        translate_go_regex("caf\u00e9")


def test_untranslatable_rules_are_skipped_with_reason() -> None:
    config = {
        "rules": [
            {"id": "ok", "regex": r"tok_[a-z]{8}", "keywords": ["tok_"]},
            {"id": "backref", "regex": r"(a)\1"},
            {"id": "path-only", "path": r"\.pem$"},
            {"id": "too-many-groups", "regex": "(a)", "secretGroup": 3},
        ]
    }
    result = import_gitleaks_config(config)
    assert [rule.id for rule in result.rules] == ["ok"]
    assert [rule_id for rule_id, _ in result.skipped] == ["backref", "path-only", "too-many-groups"]
    assert "RE2 cannot compile" in result.skipped[0][1]
