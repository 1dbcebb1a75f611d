"""The on-disk cache of compiled Hyperscan databases (failcore.dlp.hscache).

Findings are compared with an engine built without the cache, on gitleaks' own rule fixtures
(tests/data/conformance/dlp, MIT): data nobody here wrote.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from failcore.dlp import DlpEngine, builtin_rules, hscache, parse_custom_rules
from failcore.dlp import regex_backend as rx
from failcore.dlp.pending import PendingEngine, engine_ready

pytestmark = pytest.mark.skipif(not rx.hyperscan_available(), reason="hyperscan is not installed")

FIXTURES = Path(__file__).parent / "data" / "conformance" / "dlp" / "gitleaks-fixtures.jsonl"
SALT = b"hscache-test"
# What one engine stores: the per-rule probe decisions, the combined database, its MULTILINE twin for
# header blocks (DlpEngine.quiet_lines) and its rules' pattern analysis.
ENTRIES = 4


def fixture_texts(limit: int = 600) -> list[bytes]:
    texts = []
    with FIXTURES.open(encoding="utf-8") as handle:
        for line in handle:
            sample = json.loads(line)
            if not sample["needs_path"]:
                texts.append(sample["text"].encode("utf-8"))
    step = max(1, len(texts) // limit)
    return texts[::step]


def findings(engine: DlpEngine, texts: list[bytes]) -> list[list[tuple[str, int, int, str]]]:
    return [[(h.rule_id, h.start, h.end, h.fingerprint) for h in engine.scan(text)] for text in texts]


def entries(home: Path) -> dict[str, bytes]:
    directory = home / hscache.CACHE_DIR_NAME
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.hsc"))} if directory.is_dir() else {}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "failcore-home"
    monkeypatch.setenv("FAILCORE_HOME", str(path))
    monkeypatch.delenv(hscache.ENV_SWITCH, raising=False)
    return path


class Counting:
    """Counts compiles (probes and combined databases) while the test runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.probes = 0
        self.writes = 0
        real_compiles, real_write = hscache._compiles, hscache.write_entry

        def compiles(*args: object) -> bool:
            self.probes += 1
            return real_compiles(*args)  # type: ignore[arg-type]

        def write(key: bytes, payload: bytes) -> None:
            self.writes += 1
            real_write(key, payload)

        monkeypatch.setattr(hscache, "_compiles", compiles)
        monkeypatch.setattr(hscache, "write_entry", write)


# A small rule set for the tests about the cache's mechanics (each cold build compiles it).
def small_rules() -> list:
    keep = {
        "aws-access-key-id",
        "github-pat",
        "slack-bot-token",
        "private-key",
        "jwt",
        "stripe-live-secret-key",
    }
    return [rule for rule in builtin_rules() if rule.id in keep]


# Three of gitleaks' own true-positive fixtures (aws.go, github.go, slack.go), one per line.
AWS_TEXT = (
    b'AWSToken="AKIALALEMEL33243OLIB"\n'
    b'githubToken="ghp_4w6n1nobbl95xbtghnl4g16c8w8lmv3ef1nl"\n'
    b'botToken="xoxb-781236542736-2364535789652-GkwFDQoHqzXDVsC6GzqYUypD"'
)
EXPECTED = [("aws-access-key-id", 10, 30), ("github-pat", 45, 85), ("slack-bot-token", 97, 153)]


def test_cache_hit_gives_identical_findings(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = fixture_texts()
    rules = builtin_rules()
    monkeypatch.setenv(hscache.ENV_SWITCH, "0")
    reference = findings(DlpEngine(rules, salt=SALT), texts)
    assert entries(home) == {}, "a disabled cache writes nothing"
    monkeypatch.delenv(hscache.ENV_SWITCH)
    cold = DlpEngine(rules, salt=SALT)
    stored = entries(home)
    assert len(stored) == ENTRIES
    counting = Counting(monkeypatch)
    warm = DlpEngine(rules, salt=SALT)
    assert (counting.probes, counting.writes) == (0, 0), "a warm start compiles nothing"
    assert entries(home) == stored
    assert findings(cold, texts) == reference
    assert findings(warm, texts) == reference
    assert sum(map(len, reference)) > 100  # the fixtures are secrets: the comparison is not vacuous
    assert warm.hyperscan_refused == cold.hyperscan_refused


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "foreign", "not-a-database"])
def test_damaged_entry_is_rebuilt_and_findings_stay_correct(
    home: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    rules = small_rules()
    reference = DlpEngine(rules, salt=SALT).scan(AWS_TEXT)
    assert [(h.rule_id, h.start, h.end) for h in reference] == EXPECTED
    stored = entries(home)
    db_name = max(stored, key=lambda name: len(stored[name]))  # the database (the probe entry is tiny)
    probe_name = min(stored, key=lambda name: len(stored[name]))
    path = home / hscache.CACHE_DIR_NAME / db_name
    data = stored[db_name]
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        flipped = bytearray(data)
        flipped[len(data) - 100] ^= 0x55
        path.write_bytes(bytes(flipped))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign":
        path.write_bytes(stored[probe_name])  # a valid entry, of another key
    else:
        # Well formed and checksummed, but its payload is not a Hyperscan database.
        key = bytes.fromhex(db_name.removesuffix(".hsc"))
        hscache.write_entry(key, b"\x00" * 4096)
    counting = Counting(monkeypatch)
    rebuilt = DlpEngine(rules, salt=SALT)
    assert counting.probes == 0  # the probe entry was intact
    assert counting.writes == 1  # the database was compiled again and stored
    assert rebuilt.scan(AWS_TEXT) == reference
    assert entries(home)[db_name] == data, "the rebuilt entry is the one a clean build writes"
    again = Counting(monkeypatch)
    assert DlpEngine(rules, salt=SALT).scan(AWS_TEXT) == reference
    assert again.writes == 0


def test_corrupt_probe_entry_is_reprobed(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = small_rules()
    DlpEngine(rules, salt=SALT)
    stored = entries(home)
    probe_name = min(stored, key=lambda name: len(stored[name]))
    (home / hscache.CACHE_DIR_NAME / probe_name).write_bytes(stored[probe_name][:-1])
    counting = Counting(monkeypatch)
    engine = DlpEngine(rules, salt=SALT)
    assert counting.probes == len(rules)
    assert engine.hyperscan_refused == []
    assert entries(home)[probe_name] == stored[probe_name]


def test_files_are_private_whatever_the_umask(home: Path) -> None:
    old = os.umask(0)
    try:
        DlpEngine(small_rules(), salt=SALT)
    finally:
        os.umask(old)
    directory = home / hscache.CACHE_DIR_NAME
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    files = list(directory.iterdir())
    assert len(files) == ENTRIES
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not path.name.startswith(".tmp-")


def test_entry_readable_by_others_is_not_trusted(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = small_rules()
    DlpEngine(rules, salt=SALT)
    for path in (home / hscache.CACHE_DIR_NAME).iterdir():
        path.chmod(0o644)
    counting = Counting(monkeypatch)
    DlpEngine(rules, salt=SALT)
    assert counting.probes == len(rules) and counting.writes == ENTRIES
    for path in (home / hscache.CACHE_DIR_NAME).iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_key_changes_when_rules_change(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = small_rules()
    DlpEngine(rules, salt=SALT)
    first = set(entries(home))
    custom = parse_custom_rules(
        [{"id": "acme-token", "regex": "acme_[a-z0-9]{32}", "keywords": ["acme_"], "severity": "high"}],
        "policy",
    )
    engine = DlpEngine([*rules, *custom], salt=SALT)
    second = set(entries(home))
    assert len(second - first) == ENTRIES, "a new rule makes new probe and database entries"
    assert [h.rule_id for h in engine.scan(b"token acme_" + b"0123456789abcdef" * 2)] == ["acme-token"]
    counting = Counting(monkeypatch)
    DlpEngine(list(reversed(rules)), salt=SALT)
    assert counting.writes == ENTRIES, "the same rules in another order are other ids: another entry"


def test_key_covers_every_input() -> None:
    base = hscache.cache_key("db", [b"abc", b"def"], [0, 1], [0, 0], 1)
    variants = [
        hscache.cache_key("db", [b"abc", b"deg"], [0, 1], [0, 0], 1),
        hscache.cache_key("db", [b"abcdef"], [0, 1], [0, 0], 1),
        hscache.cache_key("db", [b"abc", b"def"], [1, 0], [0, 0], 1),
        hscache.cache_key("db", [b"abc", b"def"], [0, 1], [0, 2], 1),
        hscache.cache_key("db", [b"abc", b"def"], [0, 1], [0, 0], 2),
        hscache.cache_key("probe", [b"abc", b"def"], [0, 1], [0, 0], 1),
    ]
    assert len({base, *variants}) == len(variants) + 1
    assert hscache.cache_key("db", [b"abc", b"def"], [0, 1], [0, 0], 1) == base


def test_key_depends_on_platform_and_format(monkeypatch: pytest.MonkeyPatch) -> None:
    base = hscache.cache_key("db", [b"abc"], [0], [0], 1)
    assert b"Version: " in hscache.platform_tag()  # as Hyperscan itself reports it
    monkeypatch.setattr(hscache, "platform_tag", lambda: b"Version: 5.4.2 Features: AVX2 Mode: BLOCK")
    assert hscache.cache_key("db", [b"abc"], [0], [0], 1) != base
    monkeypatch.undo()
    monkeypatch.setattr(hscache, "FORMAT_VERSION", hscache.FORMAT_VERSION + 1)
    assert hscache.cache_key("db", [b"abc"], [0], [0], 1) != base


def test_prune_keeps_the_most_recently_used(home: Path) -> None:
    directory = home / hscache.CACHE_DIR_NAME
    for index in range(6):
        hscache.write_entry(bytes([index]) * 32, bytes([index]) * 100)
        os.utime(directory / f"{(bytes([index]) * 32).hex()}.hsc", (1000 + index, 1000 + index))
    stale = directory / ".tmp-left-behind.hsc"
    stale.write_bytes(b"x")
    os.utime(stale, (1, 1))
    removed = hscache.prune(directory, max_entries=4)
    assert stale in removed and not stale.exists()
    left = sorted(p.name for p in directory.glob("*.hsc"))
    assert left == sorted(f"{(bytes([i]) * 32).hex()}.hsc" for i in (2, 3, 4, 5))
    hscache.prune(directory, max_bytes=2 * (100 + hscache._HEADER.size))
    assert len(list(directory.glob("*.hsc"))) == 2
    assert hscache.read_entry(bytes([5]) * 32) == bytes([5]) * 100


def test_default_write_is_bounded(home: Path) -> None:
    for index in range(hscache.MAX_ENTRIES + 5):
        hscache.write_entry(index.to_bytes(32, "big"), b"payload")
    assert len(list((home / hscache.CACHE_DIR_NAME).glob("*.hsc"))) == hscache.MAX_ENTRIES


def test_writes_nothing_outside_failcore_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user_home = tmp_path / "user"
    user_home.mkdir()
    failcore_home = tmp_path / "fc"
    monkeypatch.setenv("HOME", str(user_home))
    monkeypatch.setenv("FAILCORE_HOME", str(failcore_home))
    monkeypatch.delenv(hscache.ENV_SWITCH, raising=False)
    monkeypatch.chdir(tmp_path)
    DlpEngine(small_rules(), salt=SALT)
    assert list(user_home.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fc", "user"]
    assert [p.name for p in failcore_home.iterdir()] == [hscache.CACHE_DIR_NAME]


def test_unwritable_home_only_costs_a_compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("FAILCORE_HOME", str(blocker / "home"))
    monkeypatch.delenv(hscache.ENV_SWITCH, raising=False)
    engine = DlpEngine(small_rules(), salt=SALT)
    assert [(h.rule_id, h.start, h.end) for h in engine.scan(AWS_TEXT)] == EXPECTED


def test_pending_engine_waits_for_the_build_and_reports_its_failure() -> None:
    release = threading.Event()
    rules = small_rules()

    def build() -> DlpEngine:
        assert release.wait(60)
        return DlpEngine(rules, salt=SALT)

    pending = PendingEngine(build)
    assert not pending.ready and not engine_ready(pending)
    with pytest.raises(TimeoutError):
        pending.result(timeout=0.01)
    release.set()
    hits = pending.scan(AWS_TEXT)  # waits for the build
    assert pending.ready and engine_ready(pending)
    assert [(h.rule_id, h.start, h.end) for h in hits] == EXPECTED
    assert pending.backend == "hyperscan"

    def broken() -> DlpEngine:
        raise ValueError("rule 'x': bad")

    failed = PendingEngine(broken)
    with pytest.raises(RuntimeError, match="could not be compiled: rule 'x': bad"):
        failed.scan(AWS_TEXT)
    assert failed.ready  # a failed build does not keep callers waiting
    assert engine_ready(DlpEngine(rules, salt=SALT))
