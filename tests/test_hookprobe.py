"""benchmarks/hookprobe.py times failcore's hooks inside a real mitmdump: a timed hook must still behave
as the hook it wraps (same result, an awaitable still awaited to its value or its exception)."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks import hookprobe


@pytest.fixture(autouse=True)
def _fresh_totals() -> None:
    hookprobe._totals.clear()


def test_a_sync_hook_keeps_its_result_and_is_counted() -> None:
    timed = hookprobe._wrap("requestheaders", lambda flow: flow * 2)
    assert timed(21) == 42
    assert timed(1) == 2
    assert hookprobe._totals["requestheaders"][0] == 2


def test_an_awaitable_hook_is_awaited_to_its_value_with_each_step_timed() -> None:
    async def hook(flow: int) -> int:
        await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        return flow + 1

    timed = hookprobe._wrap("http_connect", hook)

    async def run() -> int:
        return await timed(1)

    assert asyncio.run(run()) == 2
    assert hookprobe._totals["http_connect"][0] == 1
    # Three synchronous runs: up to each of the two suspensions, then to the return.
    assert hookprobe._totals["http_connect (await)"][0] == 3


def test_an_awaitable_hooks_exception_reaches_the_caller() -> None:
    async def hook() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    timed = hookprobe._wrap("tls_clienthello", hook)

    async def run() -> None:
        await timed()

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(run())


def test_a_cancelled_await_is_handed_to_the_hook() -> None:
    seen: list[str] = []

    async def hook() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    timed = hookprobe._wrap("server_connect", hook)

    async def run() -> None:
        task = asyncio.ensure_future(_await(timed()))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert seen == ["cancelled"]


async def _await(awaitable: object) -> object:
    return await awaitable  # type: ignore[misc]
