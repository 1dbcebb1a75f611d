"""`run()`: a context manager (`with` or `async with`) that opens a run for guarded calls.

Inside `failcore run -- CMD` (FAILCORE_EVENTS set) and without `tape=`, it joins that run: its events
go to the parent over the unix socket and interleave with the proxy's on the same tape. Otherwise it
opens its own run on `tape` (or the default tape): run_start, the events, run_end, signed checkpoints.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from failcore.dlp.pending import wait_until_built
from failcore.runtime import dispatch, hook, names
from failcore.runtime.context import RunState, current_run, pop_run, push_run
from failcore.runtime.rules import RuntimeRules, resolve
from failcore.runtime.sink import ChannelSink, TapeSink


def new_run_id() -> str:
    """The same form as the proxy's run ids (failcore.proxy.session.new_run_id)."""
    return time.strftime("run-%Y%m%dT%H%M%SZ-", time.gmtime()) + secrets.token_hex(3)


class run:
    """Open (or join) a failcore run for the guarded calls made inside it."""

    def __init__(
        self,
        policy: str | os.PathLike[str] | None = None,
        strict: bool = False,
        tape: str | os.PathLike[str] | None = None,
        run_id: str | None = None,
    ) -> None:
        self._policy = policy
        self.strict = strict
        self._tape = Path(tape).expanduser() if tape is not None else None
        self._run_id = run_id
        self._state: RunState | None = None
        self._sink: TapeSink | ChannelSink | None = None
        self._token: Any = None
        self.joined = False

    # --- what a caller reads -----------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        assert self._state is not None, "run() is not open"
        return self._state.run_id

    @property
    def tape(self) -> Path | None:
        if self._tape is not None:
            return self._tape
        inherited = os.environ.get("FAILCORE_TAPE")
        return Path(inherited) if self.joined and inherited else None

    @property
    def policy(self) -> Path:
        assert self._state is not None, "run() is not open"
        return self._state.rules.path

    def _count(self, name: str) -> int:
        return getattr(self._state, name) if self._state is not None else 0

    events = property(lambda self: self._count("events"), doc="events recorded so far")
    blocked = property(lambda self: self._count("blocked"), doc="operations refused (strict)")
    warned = property(lambda self: self._count("warned"), doc="operations that would be refused (observe)")
    tool_calls = property(lambda self: self._count("tool_calls"), doc="guarded calls recorded")
    internal_errors = property(lambda self: self._count("internal_errors"))

    @property
    def dropped(self) -> int:
        own = (
            self._sink.writer.dropped
            if isinstance(self._sink, TapeSink)
            else getattr(self._sink, "dropped", 0)
        )
        return own + self._count("dropped")

    # --- opening and closing -------------------------------------------------------------------------

    def __enter__(self) -> run:
        from failcore.paths import default_tape_dir, failcore_home, load_or_create_salt

        if self._state is not None:
            raise RuntimeError("this run() is already open; make a new one")
        hook.install()
        names.forget_names()
        with dispatch.internal():
            home = failcore_home()
            channel = os.environ.get("FAILCORE_EVENTS")
            joining = bool(self._tape is None and channel)
            # Joined, the enclosing failcore run masks the events with its DLP rules (events.apply_dlp).
            rules = RuntimeRules(resolve(self._policy), load_or_create_salt(home), dlp=not joining)
            if joining:
                assert channel is not None
                run_id = os.environ.get("FAILCORE_RUN_ID") or self._run_id or new_run_id()
                try:
                    self._sink = ChannelSink(channel, os.environ.get("FAILCORE_EVENTS_TOKEN", ""), run_id)
                except OSError as exc:
                    raise RuntimeError(
                        f"failcore: cannot join the enclosing `failcore run` at {channel}: {exc}"
                    ) from exc
                self.joined = True
            else:
                run_id = self._run_id or new_run_id()
                self._tape = self._tape or default_tape_dir()
                scanner = rules.current().scanner
                # Looked up when called, on the writer thread: a compiling engine's attributes wait.
                scan = (lambda text: scanner.engine.scan(text)) if scanner is not None else None
                self._sink = TapeSink(self._tape, run_id, str(rules.path), scan)
        self._state = RunState(run_id, rules, self.strict, self._sink.submit)
        push_run(self._state)
        self._token = current_run.set(self._state)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        close = self._detach()
        if close is not None:
            close()

    async def __aenter__(self) -> run:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        import asyncio

        close = self._detach()
        if close is not None:
            await asyncio.to_thread(close)  # flushing the tape (or the channel) stays off the event loop

    def _detach(self) -> Callable[[], None] | None:
        """Leave the run's context now; return what closes its sink (it may wait)."""
        state, sink = self._state, self._sink
        if state is None or sink is None:
            return None
        current_run.reset(self._token)
        pop_run(state)

        def close() -> None:
            with dispatch.internal():
                # Events still to build mask with the DLP engine: let its background compile finish
                # first, so closing never gives up on an event that waits for it.
                scanner = state.rules.current().scanner
                if scanner is not None:
                    wait_until_built(scanner.engine)
                counts = {
                    "tool_calls": state.tool_calls,
                    "blocked": state.blocked,
                    "warned": state.warned,
                    "failed": state.failed,
                    "internal_errors": state.internal_errors,
                }
                sink.close(counts)

        return close
