"""Shared fixtures: a real local HTTPS upstream and a real mitmproxy with failcore, in-process."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest

from failcore.runner import EmbeddedProxy, ProxySettings
from failcore.standin import StandIn

REPO = Path(__file__).resolve().parent.parent
SCHEMA = orjson.loads((REPO / "failcore" / "schema" / "egress_event.v1.json").read_bytes())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def read_tape(tape_dir: Path) -> list[dict[str, Any]]:
    """Every line of every segment, each validated against the shipped JSON Schema."""
    events = []
    for seg in sorted(tape_dir.glob("seg-*.jsonl")):
        for lineno, raw in enumerate(seg.read_bytes().splitlines(), 1):
            ev = orjson.loads(raw)
            errors = sorted(VALIDATOR.iter_errors(ev), key=str)
            assert not errors, f"{seg.name}:{lineno} does not match the schema: {errors[0].message} in {ev}"
            events.append(ev)
    return events


def network_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == "network"]


class ProxyThread:
    """failcore's embedded proxy on its own event loop in a thread, so tests can use sync clients."""

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.proxy: EmbeddedProxy | None = None
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        if self.error is None:
            self.loop.run_forever()

    async def _start(self) -> None:
        try:
            self.proxy = EmbeddedProxy(self.settings)
            await self.proxy.start()
        except BaseException as e:
            self.error = e
        finally:
            self.started.set()

    def start(self) -> ProxyThread:
        self.thread.start()
        self.started.wait(30)
        if self.error is not None:
            raise self.error
        return self

    def stop(self, drain: float = 5.0) -> None:
        if self.proxy is not None and self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(drain), self.loop).result(30)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)

    async def _shutdown(self, drain: float) -> None:
        assert self.proxy is not None
        await self.proxy.stop(drain)
        # Connections clients left open (keep-alive) would otherwise die with the loop, noisily.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def call(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run fn on the proxy's loop (mitmproxy state is not thread-safe) and return its result."""

        async def run():  # type: ignore[no-untyped-def]
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    @property
    def port(self) -> int:
        assert self.proxy is not None
        return self.proxy.address[1]

    @property
    def ca_cert(self) -> Path:
        assert self.proxy is not None and self.proxy.ca is not None
        return self.proxy.ca.cert_path

    def flush(self, timeout: float = 10) -> None:
        """Everything the proxy has seen so far is on disk: open exchanges finished, evidence built."""
        assert self.proxy is not None
        recorder = self.proxy.master.addons.get("failcore").recorder  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while self.call(recorder.pending_exchanges):
            assert time.monotonic() < deadline, "exchanges still open after the flush timeout"
            time.sleep(0.01)
        self.call(lambda: recorder.backlog.build() if recorder.backlog is not None else None)
        if recorder.writer is not None:
            assert recorder.writer.flush(timeout), "the tape writer did not catch up"


@pytest.fixture(scope="session", autouse=True)
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA and signing key for the whole session: generating RSA keys per test is slow. Autouse: no
    test writes into the real failcore home (the compiled DLP database cache lives there too)."""
    path = tmp_path_factory.mktemp("failcore-home")
    os.environ["FAILCORE_HOME"] = str(path)
    return path


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    with StandIn(workdir=tmp_path_factory.mktemp("standin")) as server:
        yield server


@pytest.fixture
def policy_file(tmp_path: Path):  # type: ignore[no-untyped-def]
    def write(text: str, name: str = "policy.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def start_proxy(confdir: Path, upstream: StandIn, tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[ProxyThread] = []

    def start(
        policy: Path | None = None,
        *,
        sets: list[str] | None = None,
        upstream_ca: Path | None = None,
        **kw: Any,
    ) -> ProxyThread:
        """`upstream_ca`: trust another upstream's CA instead of the stand-in's."""
        settings = ProxySettings(
            listen_port=0,
            policy=str(policy) if policy else None,
            tape=str(kw.pop("tape", tmp_path / "tape")),
            confdir=confdir,
            sets=[f"ssl_verify_upstream_trusted_ca={upstream_ca or upstream.ca_path}", *(sets or [])],
            **kw,
        )
        proxy = ProxyThread(settings).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def proxied_client(proxy: ProxyThread, **kw: Any) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(proxy.ca_cert))
    return httpx.Client(proxy=proxy.url, verify=ctx, timeout=30, **kw)


def curl(proxy: ProxyThread, *args: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which("curl"), "curl is required for the tests"
    cmd = ["curl", "-sS", "--proxy", proxy.url, "--cacert", str(proxy.ca_cert), "--max-time", "30", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
