"""A policy reload's DLP engine: a compile failure is recorded, the last good policy keeps deciding, and the
same file is tried again later (or at the next edit); a reload builds no interim engine it will not use.

Before: a reload whose DLP rules failed to compile was an internal error (not a `policy.reload` event),
was never tried again for the unchanged file, and an edit that kept the same DLP rules got the failed
engine back from the engine cache, so only an edit of the DLP rules themselves could recover. And a reload
whose rules were not in the compile cache built the RE2 interim engine beside the full one, although the
reload waits for the full one while the current policy serves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from failcore.dlp import hscache
from failcore.dlp import regex_backend as rx
from failcore.dlp import scanner as scanner_module
from failcore.proxy import gate as gate_module
from failcore.proxy.gate import PolicyGate
from tests.addon_harness import concerns

pytestmark = pytest.mark.skipif(
    not (rx.hyperscan_available() and rx.re2_available()), reason="needs hyperscan and google-re2"
)

BASE = "version: 1\nmode: enforce\ndefault: ALLOW\n"


def dlp_policy(token_prefix: str, extra: str = "") -> str:
    """A policy with failcore's built-in DLP rules and one custom rule."""
    return (
        BASE
        + extra
        + "dlp:\n  enabled: true\n  default_action: BLOCK\n  custom:\n"
        + f"    - id: acme-token\n      regex: '{token_prefix}[a-z0-9]{{32}}'\n"
        + f"      keywords: [{token_prefix}]\n      severity: high\n"
    )


def policy_events(events: list[dict]) -> list[tuple[str, bool, list[str]]]:
    return [
        (e["detail"]["action"], e["detail"]["ok"], e["detail"]["problems"])
        for e in events
        if e.get("kind") == "policy"
    ]


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("failcore-home")


@pytest.fixture
def home(module_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One compile cache for the module (each test's first policy compiles once); a reload's new rules
    are in no test's cache."""
    path = module_home
    monkeypatch.setenv("FAILCORE_HOME", str(path))
    monkeypatch.delenv(hscache.ENV_SWITCH, raising=False)
    return path


class Builds:
    """Every DlpEngine the scanner module builds (backend asked for), failing while `failing` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.backends: list[str] = []
        self.failing = False
        real = scanner_module.DlpEngine

        def build(rules: Any, *, backend: str = "auto", **kw: Any) -> Any:
            self.backends.append(backend)
            if self.failing and backend != "re2":
                raise MemoryError("out of memory compiling the database")
            return real(rules, backend=backend, **kw)

        monkeypatch.setattr(scanner_module, "DlpEngine", build)


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> Iterator[Builds]:
    yield Builds(monkeypatch)


def reload(h: Any) -> bool:
    return h.tctx.master.event_loop.run_until_complete(h.get(PolicyGate).reload_if_changed())


def scan_ids(h: Any, text: str) -> list[str]:
    return [hit.rule_id for hit in h.session.dlp.engine.scan(text)]


def test_a_reload_whose_dlp_rules_fail_to_compile_keeps_the_old_policy_and_is_retried(
    home: Path, tmp_path: Path, builds: Builds, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(dlp_policy("acme_"))
    clock = [1000.0]
    # The gate's clock only (asyncio's own, time.monotonic, must keep running).
    monkeypatch.setattr(gate_module, "time", SimpleNamespace(time=time.time, monotonic=lambda: clock[0]))
    with concerns(PolicyGate, confdir=tmp_path, failcore_policy=str(path)) as h:
        old_token, new_token = "acme_" + "a1" * 16, "zeta_" + "b2" * 16
        assert scan_ids(h, old_token) == ["acme-token"]
        builds.failing = True
        path.write_text(dlp_policy("zeta_"))
        assert reload(h) is False
        # The last good policy keeps deciding; the failure is a policy.reload event naming the cause.
        assert scan_ids(h, old_token) == ["acme-token"] and scan_ids(h, new_token) == []
        [*_, (action, ok, problems)] = policy_events(h.events)
        assert (action, ok) == ("policy.reload", False)
        assert "could not be compiled" in problems[0] and "MemoryError" in problems[0]
        assert not [e for e in h.events if e.get("kind") == "internal_error"]
        # Not read again before its retry time, then tried again (backing off while it fails) ...
        assert reload(h) is False and len(policy_events(h.events)) == 2
        clock[0] += gate_module.RELOAD_RETRY_SECONDS
        assert reload(h) is False and len(policy_events(h.events)) == 3
        clock[0] += gate_module.RELOAD_RETRY_SECONDS
        assert reload(h) is False and len(policy_events(h.events)) == 3  # the delay doubled
        # ... and once the compile works, the retry alone brings the edit into force.
        builds.failing = False
        clock[0] += gate_module.RELOAD_RETRY_SECONDS
        assert reload(h) is True
        assert policy_events(h.events)[-1] == ("policy.reload", True, [])
        assert scan_ids(h, new_token) == ["acme-token"] and scan_ids(h, old_token) == []
        assert reload(h) is False  # nothing left to retry


def test_an_edit_after_a_failed_compile_builds_the_same_rules_again(
    home: Path, tmp_path: Path, builds: Builds
) -> None:
    """The failed engine is not served again from the engine cache to a later edit with the same rules."""
    path = tmp_path / "policy.yaml"
    path.write_text(dlp_policy("acme_"))
    with concerns(PolicyGate, confdir=tmp_path, failcore_policy=str(path)) as h:
        builds.failing = True
        path.write_text(dlp_policy("omega_"))
        assert reload(h) is False
        builds.failing = False
        # Another edit (a path rule added; the DLP rules unchanged) is read at once, without waiting.
        path.write_text(dlp_policy("omega_", "rules:\n  - {id: no-x, path: /x, action: BLOCK}\n"))
        assert reload(h) is True
        assert scan_ids(h, "omega_" + "c3" * 16) == ["acme-token"]
        assert [r.id for r in h.session.policy.rules] == ["no-x"]


def test_a_reload_with_uncached_rules_builds_no_interim_engine(
    home: Path, tmp_path: Path, builds: Builds
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(dlp_policy("acme_"))
    with concerns(PolicyGate, confdir=tmp_path, failcore_policy=str(path)) as h:
        h.session.dlp.engine.result(timeout=120)  # the first load's engine, built to its end
        builds.backends.clear()
        path.write_text(dlp_policy("kappa_"))  # rules whose databases are not in the cache
        assert reload(h) is True
        assert builds.backends == ["auto"]
        assert h.session.dlp.engine.backend == "hyperscan"
        assert scan_ids(h, "kappa_" + "d4" * 16) == ["acme-token"]


def test_rules_that_failed_to_compile_at_start_up_are_built_again_later(
    home: Path, tmp_path: Path, builds: Builds, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first load builds its engine in the background: when that build fails, every DLP use is an
    internal error; the watcher builds the same rules again after the retry delay, unedited."""
    path = tmp_path / "policy.yaml"
    path.write_text(dlp_policy("sigma_"))
    clock = [1000.0]
    monkeypatch.setattr(gate_module, "time", SimpleNamespace(time=time.time, monotonic=lambda: clock[0]))
    builds.failing = True
    with concerns(PolicyGate, confdir=tmp_path, failcore_policy=str(path)) as h:
        token = "sigma_" + "e5" * 16
        with pytest.raises(RuntimeError, match="could not be compiled"):
            scan_ids(h, token)
        builds.failing = False
        assert reload(h) is False  # the failure seen: a rebuild is due after the retry delay
        clock[0] += gate_module.RELOAD_RETRY_SECONDS
        assert reload(h) is True
        assert scan_ids(h, token) == ["acme-token"]
        assert policy_events(h.events)[-1] == ("policy.reload", True, [])
