"""The layers load apart: `failcore diff`, the pure replay package and the demo stand-in import no
mitmproxy (nor Hyperscan, which only the proxy's DLP guard needs), and importing one module of
failcore.proxy does not load every addon. Each check runs in a fresh interpreter, since this test
process has long imported everything."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import failcore.demo
import failcore.replay
from failcore.quickstart import QUIET_PATH

REPLAY_MODULES = sorted(m.name for m in pkgutil.iter_modules(failcore.replay.__path__, "failcore.replay."))
DEMO_MODULES = sorted(m.name for m in pkgutil.iter_modules(failcore.demo.__path__, "failcore.demo."))


def loaded_after(imports: str, *watched: str) -> dict[str, bool]:
    """Which of `watched` are in sys.modules after running `imports` in a fresh interpreter."""
    code = f"import sys; {imports}; print(' '.join(str(m in sys.modules) for m in {watched!r}))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return dict(zip(watched, (word == "True" for word in done.stdout.split()), strict=True))


def test_diff_imports_neither_mitmproxy_nor_hyperscan() -> None:
    assert loaded_after("import failcore.diff", "mitmproxy", "hyperscan") == {
        "mitmproxy": False,
        "hyperscan": False,
    }


@pytest.mark.parametrize(
    ("modules", "expected"),
    [
        (REPLAY_MODULES, ("failcore.replay.pointers", "failcore.replay.serve")),  # the pure replay layer
        (DEMO_MODULES, ("failcore.demo.server", "failcore.demo.wire")),  # the stand-in: no part of the proxy
    ],
    ids=["replay", "demo"],
)
def test_package_imports_no_proxy(modules: list[str], expected: tuple[str, ...]) -> None:
    assert set(expected) <= set(modules)
    imports = "; ".join(f"import {m}" for m in modules)
    assert loaded_after(imports, "mitmproxy", "hyperscan", "failcore.proxy") == {
        "mitmproxy": False,
        "hyperscan": False,
        "failcore.proxy": False,
    }


@pytest.mark.parametrize("module", ["failcore", "failcore.tape", "failcore.runs"])
def test_core_modules_do_not_load_the_proxy(module: str) -> None:
    assert loaded_after(f"import {module}", "mitmproxy", "failcore.proxy") == {
        "mitmproxy": False,
        "failcore.proxy": False,
    }


# `failcore run` binds its socket and starts the command before mitmproxy has loaded; a command that
# makes no request finishes with only these (failcore.quickstart).
@pytest.mark.parametrize(
    "module", ["failcore.runner", "failcore.quickstart", "failcore.runmarks", *QUIET_PATH, "failcore.cli.run"]
)
def test_run_start_and_its_quiet_path_do_not_load_the_proxy(module: str) -> None:
    assert loaded_after(f"import {module}", "mitmproxy", "failcore.proxy") == {
        "mitmproxy": False,
        "failcore.proxy": False,
    }


def test_one_proxy_module_does_not_load_every_addon() -> None:
    addons = tuple(f"failcore.proxy.{m}" for m in ("recorder", "dlpguard", "gate", "replayer"))
    assert loaded_after("import failcore.proxy.session", *addons) == dict.fromkeys(addons, False)
    # Building the proxy still loads them all.
    built = loaded_after("from failcore.proxy import FailCore; FailCore()", *addons)
    assert built == dict.fromkeys(addons, True)


# What `failcore run` needs before the command starts (the CA's paths and fingerprint) and to mask the
# command line of a run without traffic: no mitmproxy, no cryptography x509, no DLP engine.
@pytest.mark.parametrize(
    ("imports", "absent"),
    [
        ("import failcore.ca", ("mitmproxy", "cryptography.x509", "failcore.dlp.engine")),
        ("import failcore.dlp.model, failcore.dlp.rules, failcore.dlp.knownclean", ("failcore.dlp.engine",)),
        ("import failcore.policy.load", ("failcore.dlp.engine", "hyperscan")),
    ],
    ids=["ca", "dlp-rules", "policy-load"],
)
def test_the_quiet_path_pieces_do_not_load_what_they_skip(imports: str, absent: tuple[str, ...]) -> None:
    assert loaded_after(imports, *absent) == dict.fromkeys(absent, False)
