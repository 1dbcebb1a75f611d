"""When the proxy loads genai-prices (failcore.proxy.meter): after start-up, once it is idle, or at the
first request that could be an LLM call, never in the middle of a user's first exchanges."""

from __future__ import annotations

import asyncio
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
