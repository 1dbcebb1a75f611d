"""Shared by the `failcore run --contain` tests: prerequisites, a destination address, the run itself.

The contained command only ever targets an address of TEST-NET-1 (192.0.2.0/24, never routed) that the
test puts on the host's loopback interface for its own upstreams: from the namespace it is reachable only
through the veth, where failcore's rules take every packet; failcore itself, in the root namespace,
reaches it on loopback. Nothing leaves the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import require, skip_or_fail

REPO = Path(__file__).resolve().parent.parent
# Set in CI so a runner that lost CAP_NET_ADMIN/CAP_SYS_ADMIN fails instead of silently skipping.
REQUIRE_ENV = "FAILCORE_REQUIRE_NETNS"
RUN_TIMEOUT = 120


def _missing() -> str | None:
    from failcore.contain import missing_prerequisites

    if shutil.which("curl") is None:
        return "curl is missing"
    return missing_prerequisites()


def require_containment() -> None:
    """Skip (reason shown) where containment cannot run; fail instead when CI or REQUIRE_ENV is set."""
    require(_missing(), required_by=("CI", REQUIRE_ENV))
    probe = subprocess.run(
        ["ip", "netns", "add", "failcore-probe-" + secrets.token_hex(3)], capture_output=True
    )
    if probe.returncode != 0:
        skip_or_fail(
            f"cannot create a network namespace here: {probe.stderr.decode().strip()}",
            required_by=("CI", REQUIRE_ENV),
        )
    name = probe.args[3]
    subprocess.run(["ip", "netns", "delete", name], check=True)


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=15)


def destination_address() -> Iterator[str]:
    """A free 192.0.2.N on the host's loopback, removed afterwards."""
    require_containment()
    in_use = _ip("-4", "-o", "addr", "show").stdout
    for _ in range(32):
        address = f"192.0.2.{2 + secrets.randbelow(250)}"
        if f" {address}/" not in in_use:
            break
    else:
        raise RuntimeError("no free 192.0.2.N address")
    added = _ip("addr", "add", f"{address}/32", "dev", "lo")
    assert added.returncode == 0, added.stderr
    try:
        yield address
    finally:
        _ip("addr", "del", f"{address}/32", "dev", "lo")


def child_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(FAILCORE_HOME=str(home), PYTHONPATH=str(REPO))
    env.pop("COLUMNS", None)
    return env


def contained_run(
    home: Path, tape: Path, command: list[str], *options: str, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """`failcore run --contain --json` as a user runs it (a subprocess): its JSON summary is stdout."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "failcore.cli",
            "run",
            "--contain",
            "--json",
            "--tape",
            str(tape),
            *options,
            "--",
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(home),
        cwd=REPO,
        check=False,
    )


def containment_leftovers() -> list[str]:
    """Anything a contained run leaves behind on the host: namespaces, veths, iptables chains."""
    left = [n for n in _ip("netns", "list").stdout.split() if n.startswith("failcore-") and "probe" not in n]
    left += [line for line in _ip("-o", "link", "show").stdout.splitlines() if ": fc" in line and "@" in line]
    for table in ("nat", "filter"):
        rules = subprocess.run(["iptables", "-w", "-t", table, "-S"], capture_output=True, text=True).stdout
        left += [line for line in rules.splitlines() if "failcore-" in line]
    return left
