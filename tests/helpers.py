"""What tests share besides fixtures: the tape reader that checks every line against the shipped
schema, the embedded proxy on a thread, and clients pointed at it. Tests import these from here
(`from tests.helpers import ...`), never from conftest.py or from another test module."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import ssl
import string
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import httpx
import jsonschema
import orjson
import pytest

from failcore.runner import EmbeddedProxy, ProxySettings
from failcore.tape.writer import TapeWriter
from tests.security.helpers import read_head

REPO = Path(__file__).resolve().parent.parent
SCHEMA = orjson.loads((REPO / "failcore" / "schema" / "egress_event.v2.json").read_bytes())
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


def github_token() -> str:
    """A fresh token of a real format (gitleaks' github-pat: ghp_ + 36 alphanumerics), built at run time
    so no secret is written in the tests and no allowlist knows it."""
    alphabet = string.ascii_letters + string.digits
    return "ghp_" + "".join(secrets.choice(alphabet) for _ in range(36))


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


def proxied_client(proxy: ProxyThread, **kw: Any) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(proxy.ca_cert))
    return httpx.Client(proxy=proxy.url, verify=ctx, timeout=30, **kw)


def curl(proxy: ProxyThread, *args: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which("curl"), "curl is required for the tests"
    cmd = ["curl", "-sS", "--proxy", proxy.url, "--cacert", str(proxy.ca_cert), "--max-time", "30", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def skip_or_fail(reason: str, *, required_by: tuple[str, ...] = ("CI",)) -> NoReturn:
    """Skip with `reason` (pytest's -rs shows it), but FAIL instead when one of the `required_by`
    environment variables is set to anything but "", "0" or "false": CI sets them, so a runner that
    lost a tool or a capability cannot turn a security test into a quiet skip."""
    demanded = [name for name in required_by if os.environ.get(name, "").lower() not in ("", "0", "false")]
    if demanded:
        pytest.fail(f"{reason} (required here: {', '.join(demanded)} is set)")
    pytest.skip(reason)


def require(reason: str | None, *, required_by: tuple[str, ...] = ("CI",)) -> None:
    """Nothing when `reason` is None (all there); otherwise skip_or_fail(reason)."""
    if reason is not None:
        skip_or_fail(reason, required_by=required_by)


class GatedSse:
    """A plain-HTTP upstream answering any GET with three SSE events (chunked), holding back events 2
    and 3 until the test sets `release` (or 30 s pass, recorded in `gave_up`): a client that sees event 1
    before it releases the rest proves the stream was not buffered, by ordering rather than by a clock."""

    EVENTS = (b"data: event 1\n\n", b"data: event 2\n\n", b"data: event 3\n\n")

    def __init__(self) -> None:
        import socket

        self.release = threading.Event()
        self.gave_up = False
        self.sent_rest = False
        self._server = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def _serve(self) -> None:
        try:
            conn, _ = self._server.accept()
        except OSError:
            return
        with conn:
            if b"\r\n\r\n" not in read_head(conn):
                return

            def chunk(data: bytes) -> bytes:
                return b"%x\r\n%s\r\n" % (len(data), data)

            try:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n" + chunk(self.EVENTS[0])
                )
                self.gave_up = not self.release.wait(30)
                self.sent_rest = True
                conn.sendall(b"".join(chunk(e) for e in self.EVENTS[1:]) + b"0\r\n\r\n")
            except OSError:
                pass

    def __enter__(self) -> GatedSse:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.close()
        self._thread.join(10)


def make_writer(
    tape_dir: Path, signing_key: Any, cls: type[TapeWriter] = TapeWriter, **kwargs: Any
) -> TapeWriter:
    kwargs.setdefault("run_id", "run-1")
    return cls(tape_dir, signing_key=signing_key, **kwargs)
