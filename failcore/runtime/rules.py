"""The policy a run checks its guarded calls against: loaded once, hot reloaded, asked through the pure
checks of `failcore.policy.runtime`.

The file is stat'ed at most every `RELOAD_EVERY` seconds, from the guarded path (like the proxy's
gate): an edit takes effect within half a second, a broken edit keeps the last good policy and is
reported once. Reading the file happens with the audit hook's re-entrancy guard held, so failcore's
own I/O is never recorded or refused.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from failcore.policy.contracts import check_output
from failcore.policy.runtime import Verdict, check_connect, check_exec, check_fs, nameservers
from failcore.policy.runtime_env import check_exec_env, judged_env
from failcore.policy.runtime_git import check_git_args

if TYPE_CHECKING:
    from failcore.dlp.scanner import DlpScanner
    from failcore.policy.model import Policy

RELOAD_EVERY: Final = 0.5


@dataclass(slots=True)
class Loaded:
    policy: Policy
    mtime_ns: int
    size: int
    scanner: DlpScanner | None


def resolve(policy: str | os.PathLike[str] | None) -> Path:
    """A path, a shipped policy name (`fs_safe`, `strict`, …) or None: the enclosing `failcore run`'s
    policy (FAILCORE_POLICY) or the shipped default."""
    from failcore import shipped

    if policy is None:
        inherited = os.environ.get("FAILCORE_POLICY")
        return Path(inherited) if inherited else shipped.default_policy_path()
    return shipped.resolve_policy(policy)


def enclosing_proxies(env: os._Environ[str] | dict[str, str]) -> frozenset[tuple[str, int]]:
    """(IP, port) of the proxy an enclosing `failcore run` exported (HTTP(S)_PROXY), if any."""
    from urllib.parse import urlsplit

    if not env.get("FAILCORE_RUN_ID"):
        return frozenset()
    found = set()
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        value = env.get(name)
        if not value:
            continue
        try:
            parts = urlsplit(value)
            if parts.hostname and parts.port:
                found.add((parts.hostname, parts.port))
        except ValueError:
            continue
    return frozenset(found)


RESOLV_CONF = "/etc/resolv.conf"


def system_nameservers() -> frozenset[str]:
    """The name servers of RESOLV_CONF, read when a run opens (none when it cannot be read)."""
    try:
        with open(RESOLV_CONF, encoding="utf-8", errors="replace") as conf:
            return nameservers(conf.read(65536))
    except OSError:
        return frozenset()


class RuntimeRules:
    """One run's policy with its DLP scanner; `current()` is cheap and thread-safe."""

    def __init__(self, path: Path, salt: bytes, *, dlp: bool = True) -> None:
        self.path = path
        self.salt = salt
        # False when joined to a `failcore run`: its proxy masks the events with its own DLP rules.
        self.dlp = dlp
        self._lock = threading.Lock()
        self._next_check = 0.0
        self.reload_problems: list[str] = []
        self.failcore_proxies = enclosing_proxies(os.environ)
        self.resolvers = system_nameservers()
        # The run's own values of the variables a child's env is judged by (check_exec_env).
        self.base_env = judged_env(os.environ)
        self._loaded = self._load()  # raises PolicyError: a bad policy at start is the user's to fix

    def _load(self) -> Loaded:
        from failcore.dlp.scanner import DlpScanner
        from failcore.policy.load import load_policy

        st = os.stat(self.path)
        policy = load_policy(self.path)
        scanner = DlpScanner.for_policy(policy, self.salt) if self.dlp else None
        return Loaded(policy, st.st_mtime_ns, st.st_size, scanner)

    def current(self) -> Loaded:
        now = time.monotonic()
        if now < self._next_check:
            return self._loaded
        with self._lock:
            if now < self._next_check:
                return self._loaded
            self._next_check = now + RELOAD_EVERY
            try:
                st = os.stat(self.path)
            except OSError:
                return self._loaded
            loaded = self._loaded
            if (st.st_mtime_ns, st.st_size) != (loaded.mtime_ns, loaded.size):
                self._reload()
            return self._loaded

    def _reload(self) -> None:
        from failcore.policy.model import PolicyError

        try:
            self._loaded = self._load()
            self.reload_problems = []
        except PolicyError as exc:
            self.reload_problems = [str(p) for p in exc.problems]
            st = os.stat(self.path)
            # Keep the last good policy; do not re-read the broken file until it changes again.
            self._loaded = Loaded(self._loaded.policy, st.st_mtime_ns, st.st_size, self._loaded.scanner)
        except OSError as exc:
            self.reload_problems = [f"{self.path}: {exc}"]

    @property
    def policy(self) -> Policy:
        return self.current().policy

    @property
    def fail_open(self) -> bool:
        return self._loaded.policy.fail_open

    def check_fs(self, op: str, path: str) -> Verdict:
        return check_fs(self.policy.fs, op, path, cwd=os.getcwd())

    def check_exec(
        self,
        program: str,
        argv: list[str],
        *,
        shell: bool,
        path: tuple[str, ...] | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Verdict:
        """The program, git's own command line, then (`env`: the child's environment) the code its
        environment makes it run."""
        policy = self.policy
        rules = policy.exec
        verdict = check_exec(rules, program, argv, shell=shell, path=path, cwd=cwd)
        if verdict.decision == "BLOCK":
            return verdict
        verdict = check_git_args(rules, program, argv, path=path, cwd=cwd)
        if verdict.decision == "BLOCK" or env is None:
            return verdict
        return check_exec_env(rules, env, self.base_env, path=path, cwd=cwd, fs=policy.fs)

    def check_connect(self, host: str | None, address: str, port: int) -> Verdict:
        if (address, port) in self.failcore_proxies:
            # The way out `failcore run` gave this process: its traffic is decided there.
            return Verdict("ALLOW", "net.failcore_proxy", f"{address}:{port} is the enclosing failcore proxy")

        return check_connect(self.policy.network, host, address, port, resolvers=self.resolvers)

    def check_output(self, tool: str, result: Any) -> dict[str, Any] | None:
        return check_output(self.policy.tools.get(tool), result)
