"""How long failcore takes to start, cold and warm compiled-DLP cache, against the bare commands.

    .venv/bin/python benchmarks/startup_bench.py [--runs 7] [--policy policies/examples/dlp.yaml]
        [--only run|mitmdump] [--repo PATH] [--json]

(a) `failcore run -- true` against plain `true`: wall time of the whole command (proxy start, the child,
    proxy stop, summary), so the difference is what failcore adds to a command.
    `failcore run -- curl URL` against `curl URL` alone: a command that makes one request (to a port nothing
    listens on: the proxy answers 502, curl alone is refused), so it waits for the proxy to finish
    loading (failcore.quickstart starts the command while mitmproxy loads; `true` never waits for it).
(b) `mitmdump -s addons/failcore_addon.py --set failcore_policy=POLICY` against bare `mitmdump`: wall
    time from exec until the listening port accepts a TCP connection.

"cold" deletes failcore's compiled-database cache (FAILCORE_HOME/hscache) before every run, which is
what a first start on a fresh machine pays; "warm" keeps it. Each run gets a private FAILCORE_HOME and
mitmproxy confdir (the CA is made once, before the timed runs). Variants are interleaved run by run and
numbers are medians with the min–max in parentheses. `--repo` points at another checkout (e.g. one made
with `git worktree add /tmp/before <commit>`) to time its code with this venv, for before/after numbers.
Run it on an otherwise idle machine: the numbers include whatever else the CPU is doing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import children_cpu, free_port, stop_process, tree_cpu
from benchmarks.report import machine_info

REPO = Path(__file__).resolve().parent.parent
# Both commands start through this launcher, so `--repo` can time another checkout with this venv: an
# editable install's import hook would otherwise load the installed checkout's failcore. It does what the
# `failcore` and `mitmdump` console scripts do, importing only the one it runs (`failcore run -- true` does
# not import mitmproxy.tools.main).
LAUNCHER = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in f.__module__.lower()]; "
    "sys.path.insert(0, sys.argv.pop(1)); tool = sys.argv.pop(1); sys.argv[0] = tool; "
    "import importlib; main = importlib.import_module('failcore.cli' if tool == 'failcore' else "
    "'mitmproxy.tools.main'); sys.exit((main.main if tool == 'failcore' else main.mitmdump)())"
)


def cpu_model() -> str:
    return dict(machine_info())["CPU"]


def fmt(samples: list[float]) -> str:
    return f"{statistics.median(samples):.3f} s ({min(samples):.3f}–{max(samples):.3f})"


DEAD_PORT = free_port()  # nothing listens there


def curl_dead() -> list[str]:
    return ["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{DEAD_PORT}/"]


class Bench:
    def __init__(self, repo: Path, policy: str, workdir: Path) -> None:
        self.repo = repo
        self.policy = str((repo / policy).resolve()) if not Path(policy).is_absolute() else policy
        self.home = workdir / "failcore-home"
        self.confdir = workdir / "mitmproxy-conf"
        self.tape = workdir / "tape"
        self.env = dict(os.environ)
        self.env["FAILCORE_HOME"] = str(self.home)
        self.env.pop("FAILCORE_HS_CACHE", None)
        # As a user's Python does: the untimed first run writes the bytecode caches the timed runs use
        # (with PYTHONDONTWRITEBYTECODE set, every run compiled failcore's modules from source).
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
            self.env.pop(name, None)

    def fill_dlp_cache(self) -> None:
        """Build the policy's DLP engine to its end in this checkout, so its caches hold everything."""
        code = (
            "import sys; "
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in f.__module__.lower()]; "
            "sys.path.insert(0, sys.argv[1]); "
            "from failcore.policy.load import load_policy; from failcore.dlp.scanner import DlpScanner; "
            "from failcore.dlp.pending import wait_until_built; "
            "scanner = DlpScanner.for_policy(load_policy(sys.argv[2]), b'fill-the-cache'); "
            "scanner is None or wait_until_built(scanner.engine)"
        )
        subprocess.run([sys.executable, "-c", code, str(self.repo), self.policy], env=self.env, check=True)

    def cold(self, measure: Callable[[], Any]) -> Any:
        shutil.rmtree(self.home / "hscache", ignore_errors=True)
        return measure()

    # (a) failcore run -- true
    def failcore_run(self) -> dict[str, float]:
        return self._timed([*self.launch("failcore"), "run", "--tape", str(self.tape), "--", "true"])

    def failcore_run_curl(self) -> dict[str, float]:
        return self._timed([*self.launch("failcore"), "run", "--tape", str(self.tape), "--", *curl_dead()])

    def plain_curl(self) -> dict[str, float]:
        return self._timed(["sh", "-c", " ".join(curl_dead()) + " || true"])

    def launch(self, tool: str) -> list[str]:
        return [sys.executable, "-c", LAUNCHER, str(self.repo), tool]

    def plain_true(self) -> dict[str, float]:
        return self._timed([shutil.which("true") or "/bin/true"])

    def _timed(self, argv: list[str]) -> dict[str, float]:
        """Wall seconds of the whole command, and the CPU seconds it used (all its threads)."""
        cpu_before = children_cpu()
        started = time.perf_counter()
        done = subprocess.run(
            argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
        )
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{argv!r} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
        return {"wall": elapsed, "cpu": children_cpu() - cpu_before}

    # (b) mitmdump until the port accepts, and until the proxy answers
    def mitmdump(self, with_failcore: bool) -> dict[str, float]:
        """Seconds from exec until the port accepts a TCP connection, and until the proxy answers a
        request (mitmdump loads `-s` scripts on its event loop, so the port can accept before then);
        the CPU seconds mitmdump used until it answered, alone and with its live children's."""
        port = free_port()
        argv = [
            *self.launch("mitmdump"),
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(port),
            "--set",
            f"confdir={self.confdir}",
            "-q",
        ]
        if with_failcore:
            argv += [
                "-s",
                str(self.repo / "addons" / "failcore_addon.py"),
                "--set",
                f"failcore_policy={self.policy}",
                "--set",
                f"failcore_tape={self.tape}",
            ]
        dead = free_port()  # nothing listens there: the proxy answers 502 at once
        request = f"GET http://127.0.0.1:{dead}/ HTTP/1.1\r\nHost: 127.0.0.1:{dead}\r\n\r\n".encode()
        started = time.perf_counter()
        process = subprocess.Popen(argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        accepted: float | None = None
        try:
            while True:
                if process.poll() is not None:
                    err = process.stderr.read().decode() if process.stderr else ""
                    raise RuntimeError(f"mitmdump exited {process.returncode} early: {err[-2000:]}")
                if time.perf_counter() - started > 120:
                    raise TimeoutError("mitmdump did not answer within 120 s")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                        accepted = accepted or time.perf_counter() - started
                        sock.settimeout(120)
                        sock.sendall(request)
                        if sock.recv(1).startswith(b"H"):
                            answered = time.perf_counter() - started
                            own, children = tree_cpu(process.pid)
                            # (children: failcore's DLP evidence worker, which loads beside the proxy)
                            return {
                                "accepts": accepted,
                                "answers": answered,
                                "cpu": own,
                                "cpu+children": own + children,
                            }
                except OSError:
                    time.sleep(0.005)
        finally:
            stop_process(process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--policy", default="policies/examples/dlp.yaml", help="policy for the mitmdump case")
    parser.add_argument("--only", choices=("run", "run-curl", "mitmdump"), action="append")
    parser.add_argument(
        "--repo",
        type=Path,
        action="append",
        help="a checkout to time (default: this one); repeat to interleave several, e.g. before/after",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    only = set(args.only or ("run", "run-curl", "mitmdump"))
    repos = [repo.resolve() for repo in args.repo or [REPO]]
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="failcore-startup-") as tmp:
        variants: dict[str, Callable[[], dict[str, float]]] = {}
        if "run" in only:
            variants["true"] = Bench(REPO, args.policy, Path(tmp) / "plain").plain_true
        if "run-curl" in only:
            variants["curl"] = Bench(REPO, args.policy, Path(tmp) / "plain").plain_curl
        if "mitmdump" in only:
            variants["bare mitmdump"] = lambda: Bench(REPO, args.policy, Path(tmp) / "bare").mitmdump(False)
        for number, repo in enumerate(repos):
            label = f"[{repo.name}] " if len(repos) > 1 else ""

            def bench(kind: str, repo: Path = repo, number: int = number) -> Bench:
                # One FAILCORE_HOME per variant: a cold variant's deleted cache must not make the next
                # "warm" variant compile (a run without traffic no longer fills the Hyperscan cache).
                return Bench(repo, args.policy, Path(tmp) / f"repo{number}-{kind}")

            # Not timed: the CA, the signing key, bytecode caches and a first compiled database.
            if "run" in only:
                cold, warm = bench("run-cold"), bench("run-warm")
                cold.failcore_run()
                warm.failcore_run()
                variants[f"{label}failcore run -- true (cold cache)"] = partial(cold.cold, cold.failcore_run)
                variants[f"{label}failcore run -- true (warm cache)"] = warm.failcore_run
            if "run-curl" in only:
                curl = bench("run-curl")
                curl.failcore_run_curl()
                variants[f"{label}failcore run -- curl (warm cache)"] = curl.failcore_run_curl
            if "mitmdump" in only:
                cold, warm = bench("mitmdump-cold"), bench("mitmdump-warm")
                cold.mitmdump(True)
                warm.mitmdump(True)
                # The proxy answers before a first start's compile is done (an interim engine decides)
                # and is stopped then: the warm variant's cache is filled by a build run to its end.
                warm.fill_dlp_cache()
                variants[f"{label}mitmdump + failcore (cold cache)"] = partial(
                    cold.cold, partial(cold.mitmdump, True)
                )
                variants[f"{label}mitmdump + failcore (warm cache)"] = partial(warm.mitmdump, True)
        for _ in range(args.runs):
            for name, measure in variants.items():
                for metric, value in measure().items():
                    samples.setdefault(f"{name}: {metric}", []).append(value)
    med = {name: statistics.median(values) for name, values in samples.items()}
    result = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "repos": [str(repo) for repo in repos],
        "policy": args.policy,
        "runs": args.runs,
        "median_s": med,
        "samples_s": samples,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"CPU: {result['cpu']} ({result['cores']} cores); load average after: {os.getloadavg()[0]:.2f}")
    print(f"{args.runs} runs per variant, interleaved; median (min–max)")
    for name, values in samples.items():
        extra = ""
        if name.endswith("cache): wall"):
            bare = "curl: wall" if "-- curl" in name else "true: wall"
            extra = f"   overhead {med[name] - med[bare]:+.3f} s"
        elif "failcore" in name and name.rsplit(": ", 1)[1] in ("answers", "cpu", "cpu+children"):
            bare = f"bare mitmdump: {name.rsplit(': ', 1)[1]}"
            extra = f"   vs bare {med[name] - med[bare]:+.3f} s" if bare in med else ""
        print(f"  {name:<58} {fmt(values)}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
