"""When the proxy loads genai-prices (failcore.proxy.meter): after start-up, once it is idle, or at the
first request that could be an LLM call, never in the middle of a user's first exchanges."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest
from mitmproxy.test import tflow, tutils

from failcore.proxy import meter as meter_module
from failcore.proxy.meter import LlmMeter
from failcore.proxy.session import FlowState, Session


@pytest.fixture
def warmed(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    done = threading.Event()
    monkeypatch.setattr(meter_module, "_warm_up_prices", done.set)
    monkeypatch.setattr(meter_module, "PRICES_WARM_UP_DELAY_S", 0.01)
    monkeypatch.setattr(meter_module, "PRICES_IDLE_S", 0.01)
    return done


def plain_request() -> tflow.HTTPFlow:
    return tflow.tflow(req=tutils.treq(path=b"/simple/pip/", host="pypi.example", content=b""))


def test_the_warm_up_waits_while_requests_are_in_flight_then_runs_when_idle(warmed: threading.Event) -> None:
    async def scenario() -> None:
        meter = LlmMeter(Session())
        meter.running()
        meter.session.flows["in-flight"] = FlowState()  # an exchange is in progress
        for _ in range(20):
            meter.request(plain_request())  # traffic that is not an LLM call
            await asyncio.sleep(0.02)
            assert not meter._warming, "warmed up while the proxy was busy"
        assert meter._warm_up_timer is not None  # checked again later
        del meter.session.flows["in-flight"]
        for _ in range(500):
            if meter._warming:
                break
            await asyncio.sleep(0.02)
        assert meter._warming
        meter.done()

    asyncio.run(scenario())
    assert warmed.wait(30)


def test_a_request_that_could_be_an_llm_call_warms_up_at_once(warmed: threading.Event) -> None:
    async def scenario() -> None:
        meter = LlmMeter(Session())
        meter.running()
        meter.session.flows["in-flight"] = FlowState()
        flow = tflow.tflow(
            req=tutils.treq(path=b"/v1/chat/completions", host="api.openai.com", content=b"{}")
        )
        meter.request(flow)
        assert meter._warming and meter._warm_up_timer is None
        meter.done()

    asyncio.run(scenario())
    assert warmed.wait(30)


def test_the_warm_up_lowers_the_switch_interval_while_it_runs_and_restores_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The import holds the GIL; the event loop should get it back within a fraction of a millisecond,
    # not the interpreter's default 5 ms, each time a request wakes it during the warm-up.
    seen: list[float] = []
    monkeypatch.setattr(meter_module, "warm_up_genai_prices", lambda: seen.append(sys.getswitchinterval()))
    before = sys.getswitchinterval()
    meter_module._warm_up_prices()
    assert seen and seen[0] <= 0.0005 < before
    assert sys.getswitchinterval() == before


def test_a_failed_warm_up_still_restores_the_switch_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("no price data")

    monkeypatch.setattr(meter_module, "warm_up_genai_prices", broken)
    before = sys.getswitchinterval()
    meter_module._warm_up_prices()  # logged, never raised
    assert sys.getswitchinterval() == before


def test_a_lower_switch_interval_set_by_the_user_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    monkeypatch.setattr(meter_module, "warm_up_genai_prices", lambda: seen.append(sys.getswitchinterval()))
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.0001)
    try:
        meter_module._warm_up_prices()
        assert seen == [pytest.approx(0.0001, abs=2e-6)]
        assert sys.getswitchinterval() == pytest.approx(0.0001, abs=2e-6)
    finally:
        sys.setswitchinterval(before)


def test_overlapping_warm_ups_restore_the_interval_that_was_there_before_the_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two proxies in one process warming up at once: the second saved the first's lowered interval
    and, ending last, left the whole process at 0.5 ms."""
    release = [threading.Event(), threading.Event()]
    started = threading.Semaphore(0)
    order = iter(release)

    def slow_import() -> None:
        mine = next(order)
        started.release()
        mine.wait(30)

    monkeypatch.setattr(meter_module, "warm_up_genai_prices", slow_import)
    before = sys.getswitchinterval()
    first = threading.Thread(target=meter_module._warm_up_prices)
    first.start()
    assert started.acquire(timeout=30)
    second = threading.Thread(target=meter_module._warm_up_prices)
    second.start()
    assert started.acquire(timeout=30)
    release[0].set()  # the first ends first, the second last
    first.join(30)
    assert sys.getswitchinterval() <= 0.0005, "still lowered while the second warm-up imports"
    release[1].set()
    second.join(30)
    assert sys.getswitchinterval() == before


def test_an_interval_set_by_the_embedder_during_the_warm_up_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    before = sys.getswitchinterval()
    monkeypatch.setattr(meter_module, "warm_up_genai_prices", lambda: sys.setswitchinterval(0.002))
    try:
        meter_module._warm_up_prices()
        assert sys.getswitchinterval() == pytest.approx(0.002, abs=2e-6)
    finally:
        sys.setswitchinterval(before)
