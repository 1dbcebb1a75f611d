"""A gitleaks import cached on disk (failcore.dlp.gitleaks, in failcore's hscache/): a policy that imports
gitleaks' bundled rules no longer parses the TOML and compiles every pattern at each load.

The file imported is gitleaks' own rule set (failcore/data/gitleaks, MIT): data nobody here wrote. The
expected results are those of the import without a cache.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest

from failcore.dlp import gitleaks, hscache
from failcore.dlp import regex_backend as rx
from failcore.policy.delegated import BUNDLED_GITLEAKS


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "failcore-home"
    monkeypatch.setenv("FAILCORE_HOME", str(path))
    monkeypatch.delenv(hscache.ENV_SWITCH, raising=False)
    return path


def uncached(path: Path) -> gitleaks.GitleaksImport:
    return gitleaks.import_gitleaks_config(tomllib.loads(path.read_text(encoding="utf-8")))


def entries(home: Path) -> list[Path]:
    return sorted((home / "hscache").glob("*.hsc"))


def no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kw: Any) -> Any:
        raise AssertionError("the cached import parsed or compiled again")

    monkeypatch.setattr(gitleaks.tomllib, "loads", refuse)
    monkeypatch.setattr(gitleaks.rx, "compile_re2", refuse)


def test_the_cached_import_is_the_import_and_skips_the_toml_and_the_pattern_compiles(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = uncached(BUNDLED_GITLEAKS)
    assert len(expected.rules) > 200
    first = gitleaks.import_gitleaks(BUNDLED_GITLEAKS)
    [entry] = entries(home)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    no_parsing(monkeypatch)
    cached = gitleaks.import_gitleaks(BUNDLED_GITLEAKS)
    assert first.rules == cached.rules == expected.rules
    assert first.skipped == cached.skipped == expected.skipped
    # The global allowlists stay one shared object, as the import makes them.
    assert cached.rules[0].allowlists[-1] is cached.rules[-1].allowlists[-1]


def test_an_edited_file_is_imported_again(home: Path, tmp_path: Path) -> None:
    copy = tmp_path / "gitleaks.toml"
    text = BUNDLED_GITLEAKS.read_text(encoding="utf-8")
    copy.write_text(text, encoding="utf-8")
    gitleaks.import_gitleaks(copy)
    edited = text.replace('id = "github-pat"', 'id = "github-pat-edited"', 1)
    assert edited != text
    copy.write_text(edited, encoding="utf-8")
    result = gitleaks.import_gitleaks(copy)
    assert "github-pat-edited" in {rule.id for rule in result.rules}
    assert result.rules == uncached(copy).rules
    assert len(entries(home)) == 2


def test_the_key_covers_the_importing_code(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = BUNDLED_GITLEAKS.read_bytes()
    key = gitleaks._cache_key(data)
    monkeypatch.setattr(gitleaks, "_cache_code", lambda: b"another version of the importer")
    assert gitleaks._cache_key(data) != key


def test_a_damaged_entry_is_discarded_and_the_file_imported_again(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gitleaks.import_gitleaks(BUNDLED_GITLEAKS)
    [entry] = entries(home)
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    entry.write_bytes(bytes(raw))
    os.chmod(entry, 0o600)
    assert gitleaks.import_gitleaks(BUNDLED_GITLEAKS).rules == uncached(BUNDLED_GITLEAKS).rules


@pytest.mark.parametrize(
    "damage",
    [
        lambda e: e["rules"][0].update(regex=7),
        lambda e: e["rules"][0].update(keywords="not-a-list"),
        lambda e: e["rules"][0].update(allowlists=[len(e["allowlists"]) + 5]),
        lambda e: e["rules"][0].pop("id"),
        lambda e: e["allowlists"][0].update(regexes=[None]),
        lambda e: e.update(skipped=[1]),
    ],
)
def test_an_entry_of_the_wrong_shape_is_discarded_and_the_file_imported_again(
    home: Path, damage: Any
) -> None:
    data = BUNDLED_GITLEAKS.read_bytes()
    gitleaks.import_gitleaks(BUNDLED_GITLEAKS)
    key = gitleaks._cache_key(data)
    payload = hscache.read_entry(key)
    assert payload is not None
    entry = orjson.loads(payload)
    damage(entry)
    hscache.write_entry(key, orjson.dumps(entry))  # a checksum that matches: only the shape is wrong
    assert gitleaks._cached_import(key) is None
    assert hscache.read_entry(key) is None  # discarded
    assert gitleaks.import_gitleaks(BUNDLED_GITLEAKS).rules == uncached(BUNDLED_GITLEAKS).rules


def test_no_entry_when_the_cache_is_switched_off(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hscache.ENV_SWITCH, "0")
    assert gitleaks.import_gitleaks(BUNDLED_GITLEAKS).rules == uncached(BUNDLED_GITLEAKS).rules
    assert entries(home) == []


def test_a_pattern_re2_refuses_is_still_skipped_from_the_cache(home: Path, tmp_path: Path) -> None:
    copy = tmp_path / "gitleaks.toml"
    copy.write_text(
        "[[rules]]\nid = \"lookahead\"\nregex = '''key(?=[0-9]{8})'''\n"
        "[[rules]]\nid = \"plain\"\nregex = '''plain_[0-9]{8}'''\n",
        encoding="utf-8",
    )
    first = gitleaks.import_gitleaks(copy)
    again = gitleaks.import_gitleaks(copy)
    assert [rule.id for rule in again.rules] == ["plain"]
    assert [rule_id for rule_id, _ in again.skipped] == ["lookahead"] == [r for r, _ in first.skipped]
    assert rx.re2_available()
