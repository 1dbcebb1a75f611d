"""The replay addon: answers requests that match a recorded run from its tape, never upstream.

The pure work (matching, recordings, overrides, serving at recorded chunk boundaries) is in
`failcore.replay`, whose docstring says how a replay works; this class only ties it to mitmproxy's
hooks and the flow's Session state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from mitmproxy import exceptions, http

from failcore.proxy.guard import StreamFailures, guarded
from failcore.proxy.session import BodyTap, Session

if TYPE_CHECKING:
    # Imported where a replay is configured or served: a proxy that replays nothing (nearly every one)
    # does not load failcore.replay at start-up (~15 ms of CPU here).
    from failcore.replay.canned import CannedResponse
    from failcore.replay.match import ReplayIndex
    from failcore.replay.pointers import Pointer
    from failcore.replay.recording import RecordedExchange, Recording
    from failcore.replay.request import RequestShape
    from failcore.replay.serve import ReplayServer

logger = logging.getLogger("failcore")


@dataclass(slots=True)
class Redirect:
    scheme: bytes
    host: str
    port: int
    chunks: tuple[int, ...] | None


@dataclass(slots=True)
class ReplayStats:
    replayed: int = 0
    overridden: int = 0
    live: int = 0
    missed: int = 0


@dataclass(slots=True)
class ReplayConfig:
    recording: Recording
    ignore: tuple[Pointer, ...]
    on_miss: str
    pace: str
    overrides: dict[int, tuple[Path, CannedResponse]] = field(default_factory=dict)


class Replayer:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.config: ReplayConfig | None = None
        self.index: ReplayIndex | None = None
        self.server: ReplayServer | None = None
        self.redirects: dict[str, Redirect] = {}
        # The step `--override N` counts: a request that matches the recording, or, once a fork has
        # happened, any request (the run has left the recording). A request the recording never had
        # before the fork (a health check, telemetry) does not shift the step being forked.
        self.step = 0
        self.stats = ReplayStats()

    def configure(self, updated: set[str]) -> None:
        names = {n for n in updated if n.startswith("failcore_replay")}
        if not names:
            return
        opts = self.session.settings  # checked by failcore.proxy.settings.Settings
        if not opts.replay:
            self.config = self.index = None
            self.session.replay_of = None
            return
        if self.server is not None:
            raise exceptions.OptionsError("replay options cannot change while the proxy runs")
        from failcore.replay.match import ReplayIndex
        from failcore.replay.overrides import parse_overrides
        from failcore.replay.pointers import parse_pointer
        from failcore.replay.recording import load_recording, parse_replay_source
        from failcore.replay.request import DEFAULT_IGNORED_POINTERS

        try:
            pointers = (*DEFAULT_IGNORED_POINTERS, *opts.replay_ignore)
            ignore = tuple(parse_pointer(p) for p in pointers)
            tape, run = parse_replay_source(opts.replay)
            recording = load_recording(tape, run, ignore)
            overrides = parse_overrides(opts.replay_override)
        except ValueError as e:
            raise exceptions.OptionsError(str(e)) from None
        self.config = ReplayConfig(recording, ignore, opts.replay_on_miss, opts.replay_pace, overrides)
        self.index = ReplayIndex(recording.exchanges)
        self.session.replay_of = {
            "tape": str(recording.tape),
            "run": recording.run,
            "on_miss": self.config.on_miss,
            "pace": self.config.pace,
            "overrides": {str(n): str(p) for n, (p, _) in sorted(overrides.items())},
        }
        from mitmproxy import ctx

        if ctx.options.connection_strategy == "eager":
            # Eager mode opens the upstream connection at CONNECT time, before a request can be matched.
            ctx.options.update(connection_strategy="lazy")

    @guarded("replayer.running")
    async def running(self) -> None:
        if self.config is not None and self.server is None:
            from failcore.replay.serve import ReplayServer

            self.server = ReplayServer(self.config.pace)
            await self.server.start()

    def done(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.config is not None:
            s = self.stats
            logger.info(
                "failcore replay of %s: %d replayed, %d overridden, %d live, %d refused",
                self.config.recording.run,
                s.replayed,
                s.overridden,
                s.live,
                s.missed,
            )

    def _host(self, flow: http.HTTPFlow) -> str:
        state = self.session.flows.get(flow.id)
        return (state.decided_host if state and state.decided_host else None) or flow.request.host

    def idle_hooks(self) -> frozenset[str]:
        """Not replaying, and no request redirected to the replay server waiting for its answer
        (failcore.proxy.dispatch): `request` redirects none, the others have none to restore.
        `config` only changes in `configure`, which publishes new settings first."""
        if self.config is None and not self.redirects:
            return frozenset({"request", "responseheaders", "error"})
        return frozenset()

    @guarded("replayer.request")
    def request(self, flow: http.HTTPFlow) -> None:
        if self.config is None or self.index is None or self.server is None or flow.response is not None:
            return
        state = self.session.state(flow)
        req = flow.request
        if req.stream:
            state.replay = self._live("the request body was streamed upstream before it could be matched")
            return
        if req.headers.get("upgrade"):
            state.replay = self._live("protocol upgrades (WebSocket) are not replayed")
            return
        from failcore.replay.request import RequestShape, normalize_body

        live = RequestShape.make(
            req.method,
            req.scheme,
            self._host(flow),
            req.port,
            req.path,
            normalize_body(req.get_content(strict=False) or b"", self.config.ignore),
        )
        source = self.index.take(live)
        override = None
        if source is not None or self.stats.overridden:
            self.step += 1
            override = self.config.overrides.get(self.step)
        if override is not None:
            path, canned = override
            self.stats.overridden += 1
            source_seq = source.seq if source else None
            state.replay = {"mode": "override", "source_seq": source_seq, "override": str(path)}
            self._serve(flow, canned)
        elif source is not None and source.response is not None:
            self.stats.replayed += 1
            state.replay = {"mode": "replayed", "source_seq": source.seq}
            self._serve(flow, source.response)
        else:
            reason = source.unservable if source is not None else "no recorded request matches"
            self._miss(flow, live, source, reason or "no recorded request matches")

    def _live(self, reason: str) -> dict[str, Any]:
        self.stats.live += 1
        return {"mode": "live", "source_seq": None, "reason": reason}

    def _miss(
        self, flow: http.HTTPFlow, live: RequestShape, source: RecordedExchange | None, reason: str
    ) -> None:
        from failcore.replay.match import MISS_STATUS, miss_body

        assert self.config is not None and self.index is not None
        state = self.session.state(flow)
        if self.config.on_miss == "live":
            state.replay = self._live(reason)
            return
        self.stats.missed += 1
        # failcore answers a refused miss itself: it is no LLM call, whatever the meter expected.
        state.llm = None
        closest = source or self.index.closest(live)
        state.replay = {"mode": "miss", "source_seq": closest.seq if closest else None, "reason": reason}
        flow.response = http.Response.make(
            MISS_STATUS,
            orjson.dumps(miss_body(live, closest, reason)),
            {"Content-Type": "application/json", "X-FailCore-Replay": "miss"},
        )

    def _serve(self, flow: http.HTTPFlow, canned: CannedResponse) -> None:
        from failcore.replay.serve import TOKEN_HEADER

        assert self.server is not None
        req = flow.request
        self.redirects[flow.id] = Redirect(req.data.scheme, req.data.host, req.data.port, canned.chunks)
        req.headers[TOKEN_HEADER] = self.server.register(canned)
        # Written to `data` directly: the host/port setters would also rewrite the Host header.
        req.data.scheme = b"http"
        req.data.host = "127.0.0.1"
        req.data.port = self.server.port

    def _restore(self, flow: http.HTTPFlow) -> Redirect | None:
        redirect = self.redirects.pop(flow.id, None)
        if redirect is not None:
            from failcore.replay.serve import TOKEN_HEADER

            req = flow.request
            req.data.scheme, req.data.host, req.data.port = redirect.scheme, redirect.host, redirect.port
            req.headers.pop(TOKEN_HEADER, None)
        return redirect

    @guarded("replayer.responseheaders")
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        redirect = self._restore(flow)
        if redirect is None or redirect.chunks is None or flow.response is None:
            return
        from failcore.replay.serve import Rechunker

        state = self.session.state(flow)
        failed = StreamFailures(self.session, flow, state, "response").stop
        inner = flow.response.stream
        if not callable(inner):
            tap = BodyTap(self.session.settings.body_cap, failed=failed)
            state.response_tap = tap
            inner = tap
        flow.response.stream = Rechunker(redirect.chunks, inner, failed)

    @guarded("replayer.error")
    def error(self, flow: http.HTTPFlow) -> None:
        self._restore(flow)
