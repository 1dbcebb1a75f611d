"""A DLP engine compiled in a background thread, so the proxy listens before the compile finishes.

Every use of the engine (a scan, its backend, its rules) waits until it is built: nothing is scanned
by half an engine and nothing passes unscanned because the engine was not ready. Callers on the event
loop ask `ready` first and move the wait to a worker thread when it is not. A build that fails raises
its error at every use, which failcore's guards record as an internal error (and, with
`fail_open: false`, answer with 502 instead of forwarding).

When the build has to compile Hyperscan databases (a first start: seconds), it says so (`compiling`)
and an interim engine of the same rules on the RE2 backend is built beside it (a fraction of a second:
no database). It finds exactly what the Hyperscan engine finds (the backends share one pipeline:
prefilter, RE2 confirmation, validators; tests/test_dlp_startup_cache.py compares them on gitleaks' fixtures)
and serves every use until the full engine is built, which then replaces it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from failcore.dlp.engine import DlpEngine

logger = logging.getLogger("failcore")


class PendingEngine:
    """Stands in for a DlpEngine while it is built; attribute access waits for the real one (or for the
    interim engine, while the real one compiles). Once the real one is built, a use costs one lookup."""

    def __init__(
        self,
        build: Callable[[], DlpEngine],
        name: str = "failcore-dlp-compile",
        interim: Callable[[], DlpEngine] | None = None,
        start: bool = True,
    ) -> None:
        """`build` may call `compiling()` when it starts work that takes seconds; `interim` then builds
        the exact stand-in that serves meanwhile. With `start=False` the build waits for `start()`
        (so `build` can refer to this object)."""
        self._done = threading.Event()
        # Set when a use can be served: the build is done, or the interim engine is built.
        self._usable = threading.Event()
        self._engine: DlpEngine | None = None
        self._error: BaseException | None = None
        self._interim_build = interim
        self._interim: DlpEngine | None = None
        self._interim_started = False
        self._interim_lock = threading.Lock()
        # The full engine once its build is done: every use then goes straight to it (no wait, no lock).
        self._built: DlpEngine | None = None
        self._thread = threading.Thread(target=self._run, args=(build,), name=name, daemon=True)
        if start:
            self._thread.start()

    def start(self) -> None:
        self._thread.start()

    def _run(self, build: Callable[[], DlpEngine]) -> None:
        try:
            self._engine = build()
        except BaseException as exc:
            self._error = exc
            logger.error("failcore: the DLP rules could not be compiled: %s: %s", type(exc).__name__, exc)
        finally:
            with self._interim_lock:
                self._done.set()
                self._usable.set()
                self._interim = None  # replaced: its memory goes
                self._built = self._engine

    def compiling(self) -> None:
        """Called by the build before it compiles: start building the interim engine (once)."""
        with self._interim_lock:
            if self._interim_build is None or self._interim_started or self._done.is_set():
                return
            self._interim_started = True
        threading.Thread(target=self._run_interim, name="failcore-dlp-interim", daemon=True).start()

    def _run_interim(self) -> None:
        assert self._interim_build is not None
        try:
            engine = self._interim_build()
        except Exception as exc:  # the uses wait for the full build instead
            logger.debug("failcore: no interim DLP engine: %s: %s", type(exc).__name__, exc)
            return
        with self._interim_lock:
            if not self._done.is_set():
                self._interim = engine
                self._usable.set()

    @property
    def ready(self) -> bool:
        """Whether a use would return at once (the engine is built, or its build failed, or the interim
        engine serves while it compiles)."""
        return self._usable.is_set()

    def usable(self, timeout: float | None = None) -> bool:
        """Wait at most `timeout` seconds until a use would return at once (see `ready`); whether it would."""
        return self._usable.wait(timeout)

    @property
    def interim(self) -> bool:
        """Whether uses are served by the interim engine now."""
        return self._interim is not None and not self._done.is_set()

    def result(self, timeout: float | None = None) -> DlpEngine:
        """The full engine (waiting for its build, never served by the interim one)."""
        if not self._done.wait(timeout):
            raise TimeoutError("the DLP engine is still being compiled")
        if self._error is not None:
            raise RuntimeError(f"the DLP rules could not be compiled: {self._error}") from self._error
        assert self._engine is not None
        return self._engine

    def current(self) -> DlpEngine:
        """The engine a use gets now: the full one, else the interim one, else the first of them built."""
        built = self._built
        if built is not None:
            return built
        self._usable.wait()
        interim = self._interim
        if interim is None or self._done.is_set():
            return self.result()
        return interim

    def __getattr__(self, name: str) -> Any:
        # Only called for what PendingEngine itself lacks: everything a DlpEngine offers.
        if name.startswith("__") or name == "_built":  # (`_built`: not set yet, mid-construction)
            raise AttributeError(name)
        built = self._built
        return getattr(built if built is not None else self.current(), name)


def engine_ready(engine: object) -> bool:
    """False while a PendingEngine is still compiling; a plain DlpEngine is always ready."""
    return not isinstance(engine, PendingEngine) or engine.ready


def wait_until_built(engine: object) -> None:
    """Block until a PendingEngine is built (raising its build error); a DlpEngine returns at once."""
    if isinstance(engine, PendingEngine):
        engine.result()


def serving(engine: DlpEngine) -> DlpEngine:
    """The engine that serves a use of `engine` now (a PendingEngine's full or interim engine, waiting
    for one as any use does); a DlpEngine is itself."""
    return engine.current() if isinstance(engine, PendingEngine) else engine
