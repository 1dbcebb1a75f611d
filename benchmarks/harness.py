"""Shared plumbing for the benchmarks: statistics, ports, processes, CPU and memory readings.

Everything here talks to real processes on loopback; nothing is simulated.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The interpreter running the benchmarks is the venv's, so its mitmdump is next to it.
VENV_BIN = Path(sys.executable).parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Stats:
    """Median and range of one metric over interleaved rounds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def fmt(self, digits: int = 0, unit: str = "") -> str:
        spec = f",.{digits}f"
        return f"{self.median:{spec}}{unit} ({self.low:{spec}}–{self.high:{spec}})"


def stats(values: Sequence[float]) -> Stats:
    if not values:
        raise ValueError("no samples")
    return Stats(tuple(values))


def ratio(value: float, reference: float) -> float:
    return value / reference if reference else float("nan")


def _row_text(row: dict[str, float], digits: int) -> str:
    return ", ".join(f"{k} {v:,.{digits}f}" if v < 10 else f"{k} {v:,.0f}" for k, v in sorted(row.items()))


def print_round(label: str, row: dict[str, float], digits: int = 2) -> None:
    """One round's measures of one variant, on one line (small values with `digits` decimals)."""
    print(f"{label}: {_row_text(row, digits)}", flush=True)


def print_medians(rows: dict[str, list[dict[str, float]]], digits: int = 2) -> None:
    """Each variant's median of every measure over its rounds (a measure a round lacks counts as 0)."""
    print("\nmedians over rounds:")
    for name, samples in rows.items():
        keys = {k for s in samples for k in s}
        med = {k: statistics.median(s.get(k, 0.0) for s in samples) for k in keys}
        print(f"{name}: {_row_text(med, digits)}")


@dataclass
class CommandLog:
    """The exact command lines a run used, first occurrence per label, for the report."""

    entries: dict[str, str] = field(default_factory=dict)

    def note(self, label: str, argv: Sequence[str]) -> None:
        self.entries.setdefault(label, " ".join(_shell_quote(arg) for arg in argv))


def _shell_quote(arg: str) -> str:
    if arg and all(ch.isalnum() or ch in "-_./:=@,+%" for ch in arg):
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces and parentheses; fields after the last ')' are fixed.
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_of(pid: int) -> list[int]:
    """Direct children of a process (failcore's DLP evidence worker is one)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def tree_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of a process and of its live children: (process, children)."""
    own = cpu_seconds(pid)
    children = 0.0
    for child in children_of(pid):
        try:
            children += cpu_seconds(child)
        except (OSError, ValueError):
            continue
    return own, children


def tree_rss_mib(pid: int) -> float:
    """RSS of a process plus its live children."""
    total = rss_mib(pid)
    for child in children_of(pid):
        try:
            total += rss_mib(child)
        except (OSError, RuntimeError):
            continue
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM (mitmproxy and nginx shut down cleanly on it), then SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@dataclass(frozen=True, slots=True)
class Measured:
    """Wall time and CPU of a child process that ran to completion."""

    wall: float
    cpu: float
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def cpu_share(self) -> float:
        """CPU used per wall second (1.0 = one core busy the whole time)."""
        return self.cpu / self.wall if self.wall else 0.0


def run_measured(argv: Sequence[str], *, timeout: float, stdout_to_null: bool = False) -> Measured:
    """Run a client to completion, with its own CPU time from wait4 (threads included)."""
    cpu_before = children_cpu()
    started = time.perf_counter()
    process = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL if stdout_to_null else subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    wall = time.perf_counter() - started
    # communicate() reaped it; proxies and servers are still running (unreaped), so the delta of the
    # reaped-children counters is this client's alone.
    return Measured(wall, children_cpu() - cpu_before, process.returncode, out or b"", err or b"")


def children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system
