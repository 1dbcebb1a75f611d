"""A DLP engine compiled in a background thread, so the proxy listens before the compile finishes.

Every use of the engine (a scan, its backend, its rules) waits until it is built: nothing is scanned
by half an engine and nothing passes unscanned because the engine was not ready. Callers on the event
loop ask `ready` first and move the wait to a worker thread when it is not. A build that fails raises
its error at every use, which failcore's guards record as an internal error (and, with
`fail_open: false`, answer with 502 instead of forwarding).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from failcore.dlp.engine import DlpEngine

logger = logging.getLogger("failcore")


class PendingEngine:
    """Stands in for a DlpEngine while it is built; attribute access waits for the real one."""

    def __init__(self, build: Callable[[], DlpEngine], name: str = "failcore-dlp-compile") -> None:
        self._done = threading.Event()
        self._engine: DlpEngine | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(build,), name=name, daemon=True)
        self._thread.start()

    def _run(self, build: Callable[[], DlpEngine]) -> None:
        try:
            self._engine = build()
        except BaseException as exc:
            self._error = exc
            logger.error("failcore: the DLP rules could not be compiled: %s: %s", type(exc).__name__, exc)
        finally:
            self._done.set()

    @property
    def ready(self) -> bool:
        """Whether a use would return at once (the engine is built, or its build failed)."""
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> DlpEngine:
        if not self._done.wait(timeout):
            raise TimeoutError("the DLP engine is still being compiled")
        if self._error is not None:
            raise RuntimeError(f"the DLP rules could not be compiled: {self._error}") from self._error
        assert self._engine is not None
        return self._engine

    def __getattr__(self, name: str) -> Any:
        # Only called for what PendingEngine itself lacks: everything a DlpEngine offers.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.result(), name)


def engine_ready(engine: object) -> bool:
    """False while a PendingEngine is still compiling; a plain DlpEngine is always ready."""
    return not isinstance(engine, PendingEngine) or engine.ready


def wait_until_built(engine: object) -> None:
    """Block until a PendingEngine is built (raising its build error); a DlpEngine returns at once."""
    if isinstance(engine, PendingEngine):
        engine.result()
