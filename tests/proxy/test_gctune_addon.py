"""failcore.proxy.gctune: the heap is frozen (gc.freeze) once the policy's DLP rules are built and no
exchange is in flight, again after a policy reload (letting go of what the old freeze held), never with
`failcore_gc_freeze=false`, and thawed when the proxy stops.

Before: failcore never froze anything; every full collection under load walked the start-up heap again
(benchmarks/gc_bench.py; BENCHMARKS.md, branch gcwork).
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy.test import tflow

from failcore.dlp.pending import PendingEngine
from failcore.policy import load_policy
from failcore.proxy import FailCore, gctune
from failcore.proxy.gate import PolicyGate
from failcore.proxy.gctune import GcTune, rules_built
from failcore.proxy.session import Session
from failcore.shipped import default_policy_path
from tests.addon_harness import concerns
from tests.helpers import proxied_client

BASE = "version: 1\nmode: observe\ndefault: ALLOW\n"


def dlp_policy(prefix: str) -> str:
    return (
        BASE
        + "dlp:\n  enabled: true\n  custom:\n"
        + f"    - id: acme-token\n      regex: '{prefix}[a-z0-9]{{32}}'\n      keywords: [{prefix}]\n"
        + "      severity: high\n"
    )


class Cycle:
    """An object that only the cyclic collector can free."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def thawed() -> Iterator[int]:
    """The process's freeze count before the test (Python freezes a few hundred objects of its own); the
    test leaves nothing frozen behind."""
    gc.unfreeze()
    gctune._holders.clear()
    yield gc.get_freeze_count()
    gctune._holders.clear()
    gc.unfreeze()


def test_frozen_once_the_rules_are_built_and_nothing_is_in_flight_then_again_after_a_reload(
    tmp_path: Path, thawed: int
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(dlp_policy("acme_"))
    with concerns(PolicyGate, GcTune, confdir=tmp_path, failcore_policy=str(path)) as h:
        tune = h.get(GcTune)
        h.session.dlp.engine.result(timeout=120)
        h.session.state(tflow.tflow())  # an exchange in flight
        assert tune.check(now=1000.0) is False and gc.get_freeze_count() == thawed
        assert tune.check(now=1000.0 + gctune.IDLE_WAIT_SECONDS - 1) is False
        h.session.flows.clear()

        kept = Cycle()
        alive_at_freeze = weakref.ref(kept)
        assert tune.check() is True
        assert gc.get_freeze_count() > thawed + 1000  # mitmproxy, failcore, the rules, …
        # What was alive at the freeze and died in a cycle stays (the documented cost) …
        del kept
        gc.collect()
        assert alive_at_freeze() is not None
        # … nothing changed: no second freeze (and no second full collection).
        assert tune.check() is False

        # A reload swaps the rules: the next freeze first lets go of what the last one held.
        path.write_text(dlp_policy("zeta_"))
        assert h.tctx.master.event_loop.run_until_complete(h.get(PolicyGate).reload_if_changed())
        assert tune.check() is True
        assert alive_at_freeze() is None
        assert gc.get_freeze_count() > thawed + 1000

        tune.done()
        assert gc.get_freeze_count() <= thawed


def test_a_freeze_waits_for_no_exchange_in_flight_only_so_long(tmp_path: Path, thawed: int) -> None:
    """Long-lived streams and tunnels may never leave the proxy idle."""
    path = tmp_path / "policy.yaml"
    path.write_text(dlp_policy("acme_"))
    with concerns(PolicyGate, GcTune, confdir=tmp_path, failcore_policy=str(path)) as h:
        tune = h.get(GcTune)
        h.session.dlp.engine.result(timeout=120)
        h.session.state(tflow.tflow())
        assert tune.check(now=1000.0) is False
        assert tune.check(now=1000.0 + gctune.IDLE_WAIT_SECONDS - 1) is False
        assert tune.check(now=1000.0 + gctune.IDLE_WAIT_SECONDS) is True
        assert gc.get_freeze_count() > thawed + 1000
        tune.done()


def test_the_option_off_freezes_nothing_and_turning_it_off_thaws(tmp_path: Path, thawed: int) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(dlp_policy("acme_"))
    with concerns(
        PolicyGate, GcTune, confdir=tmp_path, failcore_policy=str(path), failcore_gc_freeze=False
    ) as h:
        tune = h.get(GcTune)
        h.session.dlp.engine.result(timeout=120)
        h.tctx.master.event_loop.run_until_complete(running(tune))
        assert tune._task is None
        assert gc.get_freeze_count() == thawed

        h.configure(failcore_gc_freeze=True)
        assert tune.check() is True and gc.get_freeze_count() > thawed
        h.configure(failcore_gc_freeze=False)
        assert gc.get_freeze_count() <= thawed


async def running(tune: GcTune) -> None:
    tune.running()


def test_not_frozen_while_the_rules_compile(thawed: int) -> None:
    release = threading.Event()
    engine = object()  # what a build returns: not looked at here

    def build() -> Any:
        release.wait(30)
        return engine

    session = Session(
        policy=load_policy(default_policy_path()), dlp=SimpleNamespace(engine=PendingEngine(build))
    )  # type: ignore[arg-type]
    tune = GcTune(session)
    assert rules_built(session) is False
    assert tune.check() is False
    release.set()
    session.dlp.engine.result(timeout=30)  # type: ignore[union-attr]
    assert rules_built(session) is True
    assert tune.check() is True
    tune.done()


def test_a_running_proxy_freezes_its_heap_and_thaws_it_when_stopped(
    start_proxy, upstream, thawed: int
) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy()
    with proxied_client(proxy) as client:
        assert client.get(upstream.url + "/json").status_code == 200
    deadline = time.monotonic() + 60
    while gc.get_freeze_count() <= thawed + 1000 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gc.get_freeze_count() > thawed + 1000
    [tune] = [c for c in proxy_concerns(proxy) if isinstance(c, GcTune)]
    assert tune._frozen_for is not None
    proxy.stop()
    assert gc.get_freeze_count() <= thawed


def proxy_concerns(proxy) -> tuple[object, ...]:  # type: ignore[no-untyped-def]
    [addon] = [a for a in proxy.proxy.master.addons.chain if isinstance(a, FailCore)]
    return addon.concerns


def test_a_failing_freeze_is_recorded_and_the_watch_goes_on(
    tmp_path: Path, thawed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> int:
        raise MemoryError("no room to collect")

    monkeypatch.setattr(gctune, "freeze_heap", broken)
    monkeypatch.setattr(gctune, "CHECK_SECONDS", 0.01)
    path = tmp_path / "policy.yaml"
    path.write_text(dlp_policy("acme_"))
    with concerns(PolicyGate, GcTune, confdir=tmp_path, failcore_policy=str(path)) as h:
        tune = h.get(GcTune)
        h.session.dlp.engine.result(timeout=120)

        async def watch_a_while() -> bool:
            tune.running()
            await asyncio.sleep(0.2)
            alive = tune._task is not None and not tune._task.done()
            tune.done()
            return alive

        assert h.tctx.master.event_loop.run_until_complete(watch_a_while()) is True
        [error] = h.kinds("internal_error")  # once: not again every half second
        assert "gc freeze" in str(error) and "MemoryError" in str(error)
        assert gc.get_freeze_count() == thawed


def test_two_proxies_in_one_process_share_the_freeze_the_last_to_stop_thaws(
    tmp_path: Path, thawed: int
) -> None:
    """The collector is the process's: one proxy stopping left the other's heap thawed (and that one
    believing it frozen, never freezing again)."""
    first, second = tmp_path / "a", tmp_path / "b"
    for d in (first, second):
        d.mkdir()
        (d / "policy.yaml").write_text(dlp_policy("acme_"))
    with (
        concerns(PolicyGate, GcTune, confdir=first, failcore_policy=str(first / "policy.yaml")) as a,
        concerns(PolicyGate, GcTune, confdir=second, failcore_policy=str(second / "policy.yaml")) as b,
    ):
        for h in (a, b):
            h.session.dlp.engine.result(timeout=120)
            assert h.get(GcTune).check() is True
        a.get(GcTune).done()
        assert gc.get_freeze_count() > thawed + 1000, "the other proxy's freeze is still in force"
        b.get(GcTune).done()
        assert gc.get_freeze_count() <= thawed


def test_frozen_again_once_genai_prices_has_loaded(
    tmp_path: Path, thawed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """genai-prices' price data (~33,000 objects that live as long as the proxy) is loaded by the meter
    in a thread after start-up, so after the first freeze: the heap is frozen again, once, for every
    full collection not to walk it. (Its load stands in here: this process may have loaded it before.)"""
    from failcore.proxy import meter
    from failcore.proxy.meter import LlmMeter

    loaded: list[object] = []
    monkeypatch.setattr(meter, "_warm_up_prices", lambda: loaded.extend([i] for i in range(20_000)))

    path = tmp_path / "policy.yaml"
    path.write_text(dlp_policy("acme_"))
    with concerns(PolicyGate, LlmMeter, GcTune, confdir=tmp_path, failcore_policy=str(path)) as h:
        tune = h.get(GcTune)
        h.session.dlp.engine.result(timeout=120)
        assert tune.check() is True
        frozen = gc.get_freeze_count()
        assert tune.check() is False

        h.get(LlmMeter)._warm_up()  # (what the warm-up thread runs)
        assert tune.check() is True
        assert gc.get_freeze_count() > frozen + 10_000
        assert tune.check() is False
        tune.done()
