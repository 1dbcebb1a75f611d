"""What `failcore run`'s quick path skips, and why each skip is exact (failcore.quickstart, failcore.ca,
failcore.dlp.knownclean). Speed itself is measured by benchmarks/startup_bench.py, not here."""

from __future__ import annotations

import hashlib
import os
import ssl
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from failcore.ca import ensure_ca
from failcore.dlp import builtin_rules, hscache
from failcore.dlp.engine import DlpEngine
from failcore.dlp.knownclean import KnownClean
from failcore.policy.load import load_policy
from failcore.quickstart import ArgvMasker
from failcore.shipped import default_policy_path
from tests.helpers import github_token

SALT = b"startup-test"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "failcore-home"
    monkeypatch.setenv("FAILCORE_HOME", str(path))
    monkeypatch.delenv(hscache.ENV_SWITCH, raising=False)
    return path


# --- the CA without parsing its key ----------------------------------------------------------------


def test_the_quick_ca_names_the_same_files_and_fingerprint_as_the_checked_one(tmp_path: Path) -> None:
    checked = ensure_ca(tmp_path / "conf")
    quick = ensure_ca(tmp_path / "conf", check=False)
    assert quick == checked
    # The fingerprint, derived independently: the standard library's PEM-to-DER of the certificate.
    der = ssl.PEM_cert_to_DER_cert(checked.cert_path.read_text())
    assert quick.sha256 == hashlib.sha256(der).hexdigest()
    assert stat.S_IMODE(os.stat(quick.key_path).st_mode) == 0o600


def test_the_quick_ca_creates_a_missing_ca_like_the_checked_one(tmp_path: Path) -> None:
    quick = ensure_ca(tmp_path / "conf", check=False)
    assert quick.key_path.is_file() and stat.S_IMODE(os.stat(quick.key_path).st_mode) == 0o600
    assert ensure_ca(tmp_path / "conf") == quick


def test_the_quick_ca_does_not_trust_a_certificate_file_that_is_not_pem(tmp_path: Path) -> None:
    first = ensure_ca(tmp_path / "conf")
    first.cert_path.write_text("not a certificate\n")
    # No fingerprint made up from it: the full load runs and fails as it always did.
    with pytest.raises(ValueError):
        ensure_ca(tmp_path / "conf")
    with pytest.raises(ValueError):
        ensure_ca(tmp_path / "conf", check=False)


# --- strings known to be clean ---------------------------------------------------------------------


def test_a_string_is_known_clean_only_after_being_remembered_for_the_same_rules(home: Path) -> None:
    rules = builtin_rules()
    memo = KnownClean(rules, SALT)
    assert not memo.clean("agent.py")
    memo.remember("agent.py")
    memo.save()
    assert KnownClean(rules, SALT).clean("agent.py")
    assert not KnownClean(rules, SALT).clean("agent.py ")
    # Any change to any rule (here one regex) names another entry.
    changed = [replace(rules[0], regex=rules[0].regex + "x"), *rules[1:]]
    assert not KnownClean(changed, SALT).clean("agent.py")
    assert not KnownClean(rules[1:], SALT).clean("agent.py")
    # Another home's salt does not recognise it either.
    assert not KnownClean(rules, b"another salt").clean("agent.py")


def test_the_remembered_strings_are_not_on_disk_in_clear(home: Path) -> None:
    memo = KnownClean(builtin_rules(), SALT)
    memo.remember("--some-rather-distinctive-argument")
    memo.save()
    files = list((home / hscache.CACHE_DIR_NAME).glob("*.hsc"))
    assert files
    for path in files:
        assert b"distinctive" not in path.read_bytes()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_argv_masker_builds_no_engine_for_a_command_line_seen_clean_and_still_masks_a_token(
    home: Path,
) -> None:
    policy = load_policy(default_policy_path())
    argv = ["failcore", "run", "--", "python", "agent.py"]
    first = ArgvMasker(policy, SALT)
    assert [first.scan(value) for value in argv] == [[]] * len(argv)
    assert first.built
    first.save()
    second = ArgvMasker(policy, SALT)
    assert [second.scan(value) for value in argv] == [[]] * len(argv)
    assert not second.built
    # A token is scanned (and found) every time: strings with a hit are never remembered.
    token = github_token()
    for _ in range(2):
        masker = ArgvMasker(policy, SALT)
        hits = masker.scan(token)
        assert masker.built and hits and hits[0].end - hits[0].start == len(token)
        masker.save()
    # The same findings as the proxy's engine (Hyperscan backend, where installed).
    engine = DlpEngine(builtin_rules(), salt=SALT)
    assert [engine.scan(value) for value in argv] == [[]] * len(argv)
    assert ArgvMasker(policy, SALT).scan(f"--token={token}") == engine.scan(f"--token={token}")
