"""Where a run's events go: its own tape (a TapeWriter, as the proxy opens one) or the enclosing
`failcore run`, through the unix socket it exports (FAILCORE_EVENTS, FAILCORE_EVENTS_TOKEN).

Both take an event dict or a builder called off the guarded path (on the writer's or the sender's
thread), never block the caller, and count what they had to drop.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import orjson

from failcore.dlp.masking import mask_strings
from failcore.event import EgressEvent

Item = dict[str, Any] | Callable[[], dict[str, Any]]
QUEUE_SIZE: Final = 10_000
# How long closing waits for the channel's sender to deliver what is queued (a parent that reads).
CLOSE_TIMEOUT: Final = 60.0


class TapeSink:
    """A run of its own on a tape directory: run_start, the events, run_end, signed checkpoints."""

    def __init__(
        self, tape: Path, run_id: str, policy: str, scan: Callable[[str], Any] | None = None
    ) -> None:
        from failcore import __version__
        from failcore.paths import failcore_home
        from failcore.tape.keys import load_or_create_signing_key
        from failcore.tape.writer import TapeWriter

        self.run_id = run_id
        self.started = time.time()
        key = load_or_create_signing_key(failcore_home())
        self.writer = TapeWriter(tape, signing_key=key, run_id=run_id, queue_size=QUEUE_SIZE)
        self.writer.start()  # TapeLockedError names the holder's pid
        argv = sys.argv[:32]

        def run_start() -> dict[str, Any]:
            # Built on the writer thread: a secret on the command line is masked by the run's DLP rules.
            return EgressEvent(
                kind="run_start",
                run=run_id,
                ts_start=self.started,
                detail={
                    "version": __version__,
                    "pid": os.getpid(),
                    "argv": mask_strings(argv, scan),
                    "policy": policy,
                    "tape": str(tape),
                    "runtime": True,
                },
            ).to_dict()

        self.writer.submit(run_start)

    def submit(self, item: Item) -> bool:
        return self.writer.submit(item)

    def close(self, counts: dict[str, int]) -> None:
        self.writer.flush(timeout=10)
        now = time.time()
        self.writer.submit(
            EgressEvent(
                kind="run_end",
                run=self.run_id,
                ts_start=self.started,
                ts_end=now,
                detail={**counts, "dropped": self.writer.dropped, "duration_s": round(now - self.started, 3)},
            ).to_dict()
        )
        self.writer.close()


class ChannelSink:
    """Events to the enclosing `failcore run`: newline-delimited JSON after the token.

    An event is built and sent from the guarded thread itself when nothing is queued before it
    (building is cheap here: the parent applies its DLP rules, see `events.apply_dlp`), so it reaches
    the parent before the agent's next request does and the tape holds tool calls and network
    exchanges in the order they happened. While the socket is busy, events go to a bounded queue that
    a thread of its own sends, in order.
    """

    def __init__(self, path: str, token: str, run_id: str) -> None:
        self.run_id = run_id
        self.dropped = 0
        self._lock = threading.Lock()  # one sender at a time; `_pending` counts what is queued
        self._pending = 0
        self._broken = False
        self._queue: queue.Queue[Item | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(path)
            self._sock.sendall(token.encode("ascii") + b"\n")
        except OSError:
            self._sock.close()
            raise
        self._thread = threading.Thread(target=self._send_loop, name="failcore-runtime-channel", daemon=True)
        self._thread.start()

    def submit(self, item: Item) -> bool:
        with self._lock:
            if self._broken:
                self.dropped += 1
                return False
            if self._pending == 0:
                from failcore.runtime.dispatch import internal

                with internal():
                    return self._send(item)
            self._pending += 1
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            with self._lock:
                self._pending -= 1
                self.dropped += 1
            return False

    def _send(self, item: Item) -> bool:
        """Build and send one event (the lock held); False once the parent is gone."""
        try:
            event = item() if callable(item) else item
            self._sock.sendall(orjson.dumps(event) + b"\n")
            return True
        except OSError:
            self._broken = True
            self.dropped += 1
            return False
        except Exception as exc:  # a builder failed: say so instead of losing the event silently
            from failcore.runtime.events import internal_error_event

            try:
                self._sock.sendall(
                    orjson.dumps(internal_error_event(self.run_id, "runtime.build", exc, True)) + b"\n"
                )
            except OSError:
                self._broken = True
            return False

    def _send_loop(self) -> None:
        from failcore.runtime.dispatch import internal

        with internal():
            while True:
                item = self._queue.get()
                if item is None:
                    return
                with self._lock:
                    self._pending -= 1
                    self._send(item)

    def close(self, counts: dict[str, int]) -> None:
        del counts  # the enclosing run writes its own run_end
        with contextlib.suppress(queue.Full):  # after every event queued so far
            self._queue.put(None, timeout=CLOSE_TIMEOUT)
        self._thread.join(timeout=CLOSE_TIMEOUT)
        if self._thread.is_alive():
            left = self._queue.qsize()
            print(
                f"failcore: {left} runtime event(s) not delivered to failcore run in {CLOSE_TIMEOUT:.0f}s",
                file=sys.stderr,
            )
        self._sock.close()
