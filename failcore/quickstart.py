"""`failcore run` starts the command while mitmproxy is still loading.

Importing mitmproxy's DumpMaster (every default addon) costs about as much CPU as everything else
`failcore run -- true` does. So `run` binds its listening socket first, points the command at it and
starts the command at once, while mitmproxy and failcore's addons load in a background thread:

- a connection made before the proxy is up waits in the socket's listen backlog; mitmproxy adopts that
  same socket (see EmbeddedProxy) and accepts it once the policy, the DLP databases and the tape are
  ready, so nothing passes before the proxy can decide and record it;
- a command that finishes before mitmproxy has loaded, with no connection waiting, gets its run on the
  tape here (run_start, policy.load, run_end: what the proxy would have written for it) and mitmproxy is
  never waited for.

The policy is loaded and checked before the command starts, so an invalid policy still stops `run`
before the command runs.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from failcore.readiness import readable_now
from failcore.runner import ProxySettings, ProxyStartError

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

    from failcore.policy.model import Policy
    from failcore.runner import EmbeddedProxy

# What EmbeddedProxy.start imports: the costly part of starting the proxy.
PRELOAD = ("mitmproxy.tools.dump", "failcore.proxy")
# What a run without traffic needs to finish (record_quiet_run, the summary), imported before the loader
# starts: once abandoned, the loader's imports fail, and a module it was importing that falls back on an
# ImportError must not be one the quiet path then uses.
QUIET_PATH = (
    "failcore.event",
    "failcore.runmarks",
    "failcore.tape.keys",
    "failcore.tape.writer",
    "failcore.runs",
    "failcore.views.tables",
)
# How long a command that exited with connections still waiting may take to have them answered.
BACKLOG_DRAIN_S = 5.0


def applies(settings: ProxySettings) -> bool:
    """Only the plain regular mode listens on one socket failcore can bind first; `--set` options are
    checked by mitmproxy alone, so with them the proxy starts first, as before."""
    return list(settings.modes) == ["regular"] and not settings.sets and not settings.extra


class _Abandon:
    """A meta path finder that stops the loader thread's imports once nothing will use them, so a
    command that already finished does not share the CPU with a useless import."""

    def __init__(self) -> None:
        self.thread: int | None = None
        self.abandoned = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if self.abandoned and threading.get_ident() == self.thread:
            raise ImportError(f"failcore: loading {name} abandoned")
        return None


class QuickStart:
    def __init__(self, proxy: EmbeddedProxy) -> None:
        self.proxy = proxy
        self.settings = proxy.settings
        self.policy: Policy | None = None
        self.policy_path: Path | None = None
        self.listener: socket.socket | None = None
        self._loaded: asyncio.Future[None] | None = None
        self._abandon = _Abandon()

    def prepare(self) -> None:
        """Check the policy, bind the socket, make sure of the CA and start loading mitmproxy.
        Raises ProxyStartError (nothing started then)."""
        from failcore.ca import ensure_ca
        from failcore.policy.load import load_policy, with_mode
        from failcore.policy.model import PolicyError
        from failcore.shipped import default_policy_path, resolve_policy

        s = self.settings
        try:
            path = resolve_policy(s.policy or default_policy_path())
            self.policy = with_mode(load_policy(path), s.policy_mode)
            self.policy_path = path
        except (PolicyError, OSError) as e:
            raise ProxyStartError(f"invalid failcore policy:\n{e}") from None
        try:
            # The same backlog asyncio's server uses; connections beyond it are refused, not lost.
            self.listener = socket.create_server((s.listen_host, 0), backlog=socket.SOMAXCONN)
        except OSError as e:
            raise ProxyStartError(f"cannot listen on {s.listen_host}: {e}") from None
        s.listen_socket = self.listener
        # The key is parsed by mitmproxy when the proxy loads (on the loader thread), not here.
        self.proxy.ca = ensure_ca(s.confdir, check=False)
        for name in QUIET_PATH:
            importlib.import_module(name)
        self._start_loading()

    def _start_loading(self) -> None:
        loop = asyncio.get_running_loop()
        self._loaded = loop.create_future()
        done = self._loaded

        def settle(error: BaseException | None) -> None:
            if done.done() or self._abandon.abandoned:  # nobody waits for an abandoned load
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(ProxyStartError(f"could not load the proxy: {error}"))

        def load() -> None:
            self._abandon.thread = threading.get_ident()
            error: BaseException | None = None
            try:
                for name in PRELOAD:
                    importlib.import_module(name)
            except BaseException as e:  # reported through the future, or moot once abandoned
                error = e
            finally:
                # Thread ids are reused: a later thread (the tape writer's) must not inherit the abandon.
                self._abandon.thread = None
            if not loop.is_closed():
                loop.call_soon_threadsafe(settle, error)

        sys.meta_path.insert(0, self._abandon)
        # A daemon: a command that finished first does not wait for the import at exit.
        threading.Thread(target=load, name="failcore-load", daemon=True).start()

    def pending(self) -> bool:
        """A connection is waiting in the listen backlog (accepted by the kernel, not yet by mitmproxy)."""
        if self.listener is None or self.listener.fileno() < 0:
            return False
        return readable_now(self.listener)

    async def follow(self, child: Any, needs_proxy: Callable[[], bool] = lambda: False) -> bool:
        """Waits for the command or for mitmproxy to load, whichever first. True: the proxy was started
        (the caller goes on as with a proxy started first). False: the command finished without a
        connection waiting and without `needs_proxy()` (e.g. runtime events the run must write through
        the proxy's session); its run is on the tape already."""
        assert self._loaded is not None
        exited = asyncio.ensure_future(child.wait())
        await asyncio.wait([self._loaded, exited], return_when=asyncio.FIRST_COMPLETED)
        if exited.done() and not self.pending() and not needs_proxy():
            # Nothing needs the proxy: stop loading it (the finder stays in place for the loader thread;
            # it only ever acts on that thread) and record the run here.
            self._abandon.abandoned = True
            self._loaded.cancel()
            self.close()
            self.record_quiet_run()
            return False
        if not exited.done():
            exited.cancel()
        try:
            await self._loaded
            await self.proxy.start()
        finally:
            self._unhook()
        if child.returncode is not None:
            await self._answer_waiting()
        return True

    async def _answer_waiting(self) -> None:
        """The command exited while its connections still waited: let the proxy accept and finish them
        (stop() then waits for the exchanges in flight)."""
        assert self.proxy.master is not None
        proxyserver = self.proxy.master.addons.get("proxyserver")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BACKLOG_DRAIN_S
        while (self.pending() or proxyserver.connections) and loop.time() < deadline:
            await asyncio.sleep(0.01)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()

    def abandon(self) -> None:
        """Nothing will use the proxy (the command could not start): stop loading it, close the socket."""
        self._abandon.abandoned = True
        if self._loaded is not None:
            self._loaded.cancel()
        self.close()

    def _unhook(self) -> None:
        if self._abandon in sys.meta_path:
            sys.meta_path.remove(self._abandon)

    def record_quiet_run(self) -> None:
        """What the proxy writes for a run without traffic: run_start, the policy it loaded, run_end."""
        from failcore.event import EgressEvent
        from failcore.paths import default_tape_dir, failcore_home, load_or_create_salt
        from failcore.runmarks import policy_detail, run_end_detail, run_start_detail
        from failcore.tape.keys import load_or_create_signing_key
        from failcore.tape.writer import TapeWriter

        s = self.settings
        run_id = self.proxy.run_id
        tape_dir = Path(s.tape or default_tape_dir()).expanduser()
        home = failcore_home()
        writer = TapeWriter(tape_dir, signing_key=load_or_create_signing_key(home), run_id=run_id)
        writer.start()
        try:
            started = time.time()
            policy = self.policy
            # The command line is masked by the run's DLP rules, as the proxy's run_start is.
            masker = ArgvMasker(policy, load_or_create_salt(home)) if policy else None
            scan = masker.scan if masker is not None and masker.enabled else None
            writer.submit(
                lambda: EgressEvent(
                    kind="run_start",
                    run=run_id,
                    ts_start=started,
                    detail=run_start_detail(policy, tape_dir, scan=scan),
                ).to_dict()
            )
            writer.submit(
                EgressEvent(
                    kind="policy",
                    run=run_id,
                    ts_start=started,
                    detail=policy_detail("policy.load", self.policy_path, policy, []),
                ).to_dict()
            )
            writer.flush(timeout=10)
            if masker is not None:
                masker.save()
            now = time.time()
            counts = {"requests": 0, "blocked": 0, "failed": 0}
            detail = run_end_detail(counts, 0, writer.dropped, 0, now - started)
            writer.submit(
                EgressEvent(kind="run_end", run=run_id, ts_start=started, ts_end=now, detail=detail).to_dict()
            )
        finally:
            writer.close()


class ArgvMasker:
    """Scans the command line with the run's DLP rules. A string known to be clean for these rules
    (failcore.dlp.knownclean) is not scanned again; the others are scanned by the rules' engine on its
    RE2 backend: the engine's reference semantics (the Hyperscan backend only narrows where RE2 looks,
    and reports the same findings), built without compiling a Hyperscan database, which a first start
    would otherwise do (seconds) to scan a few short strings."""

    def __init__(self, policy: Policy, salt: bytes) -> None:
        from failcore.dlp.rules import policy_rules

        self._salt = salt
        self._rules = policy_rules(policy)
        self._known: Any = None
        self._engine: Any = None
        self.enabled = self._rules is not None

    @property
    def built(self) -> bool:
        return self._engine is not None

    def scan(self, text: str) -> list[Any]:
        from failcore.dlp import regex_backend as rx
        from failcore.dlp.knownclean import KnownClean

        assert self._rules is not None
        backend = "re2" if rx.re2_available() else "auto"
        if self._known is None:
            self._known = KnownClean(self._rules, self._salt, backend)
        if self._known.clean(text):
            return []
        if self._engine is None:
            from failcore.dlp.engine import DlpEngine

            self._engine = DlpEngine(self._rules, backend=backend, salt=self._salt)
        hits: list[Any] = self._engine.scan(text)
        if not hits:
            self._known.remember(text)
        return hits

    def save(self) -> None:
        if self._known is not None:
            self._known.save()
