"""Transparent mode end to end: a client in its own network namespace, with no proxy settings at all,
reaches an HTTPS upstream through failcore only because iptables redirects its packets.

Layout (all addresses belong to this test's veth pair, nothing is routed anywhere else):

    netns fc-XXXX                         host
    curl -> 10.231.N.1:<upstream port> --veth--> PREROUTING REDIRECT -> failcore (transparent)
                                                                       -> StandIn on 10.231.N.1

mitmproxy recovers the original destination with SO_ORIGINAL_DST, so the tape must name the stand-in's
address and port even though the client never heard of the proxy.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from failcore.demo.handler import SAMPLE_DOCUMENT
from failcore.demo.server import StandIn
from tests.helpers import REPO, network_events, read_tape, require, skip_or_fail

pytestmark = pytest.mark.netns

REQUIRED_TOOLS = ("ip", "iptables", "curl")
SUBNET_PREFIX = "10.231"
PROXY_START_TIMEOUT = 20.0
COMMAND_TIMEOUT = 15.0
# Set in CI so a runner that lost CAP_NET_ADMIN/CAP_SYS_ADMIN fails instead of silently skipping.
REQUIRE_ENV = "FAILCORE_REQUIRE_NETNS"


def _missing_prerequisite() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces and iptables are Linux only"
    if os.geteuid() != 0:
        return "needs root to create a network namespace and an iptables nat rule"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (Debian packages: iproute2, iptables, curl)"
    return None


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)


def _must(*cmd: str) -> str:
    done = _run(*cmd)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _free_subnet_octet() -> int:
    """A 10.231.N.0/30 that no interface on this host uses yet, so the test cannot shadow a real route."""
    in_use = _must("ip", "-4", "-o", "addr", "show") + _must("ip", "-4", "route", "show")
    for _ in range(64):
        octet = secrets.randbelow(256)
        if f"{SUBNET_PREFIX}.{octet}." not in in_use:
            return octet
    raise RuntimeError(f"no free {SUBNET_PREFIX}.N.0/30 subnet found")


@dataclass(frozen=True, slots=True)
class VethNamespace:
    """A network namespace linked to the host by a /30 veth pair; the host side is the default route."""

    name: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str

    @classmethod
    def random(cls) -> VethNamespace:
        tag = secrets.token_hex(3)
        octet = _free_subnet_octet()
        return cls(
            name=f"fc-{tag}",
            host_if=f"fch-{tag}",
            ns_if=f"fcn-{tag}",
            host_ip=f"{SUBNET_PREFIX}.{octet}.1",
            ns_ip=f"{SUBNET_PREFIX}.{octet}.2",
        )

    def create(self) -> None:
        _must("ip", "netns", "add", self.name)
        _must("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _must("ip", "link", "set", self.ns_if, "netns", self.name)
        _must("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _must("ip", "link", "set", self.host_if, "up")
        self.exec("ip", "link", "set", "lo", "up")
        self.exec("ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        self.exec("ip", "link", "set", self.ns_if, "up")
        self.exec("ip", "route", "add", "default", "via", self.host_ip)

    def exec(self, *cmd: str) -> str:
        return _must("ip", "netns", "exec", self.name, *cmd)

    def delete(self) -> list[str]:
        """Best effort teardown; returns what could not be removed so the test can report it."""
        problems = []
        if (
            _run("ip", "netns", "delete", self.name).returncode != 0
            and self.name in _run("ip", "netns", "list").stdout.split()
        ):
            problems.append(f"netns {self.name}")
        # Deleting the namespace destroys the pair; this only matters if setup failed before the move.
        if _run("ip", "link", "show", self.host_if).returncode == 0:
            _run("ip", "link", "delete", self.host_if)
            if _run("ip", "link", "show", self.host_if).returncode == 0:
                problems.append(f"link {self.host_if}")
        return problems


@dataclass(frozen=True, slots=True)
class RedirectRule:
    """nat PREROUTING REDIRECT of one destination arriving on one interface to a local port."""

    interface: str
    destination: str
    dport: int
    to_port: int

    def spec(self) -> list[str]:
        return [
            "PREROUTING",
            "-i",
            self.interface,
            "-p",
            "tcp",
            "-d",
            self.destination,
            "--dport",
            str(self.dport),
            "-j",
            "REDIRECT",
            "--to-ports",
            str(self.to_port),
        ]

    def add(self) -> None:
        _must("iptables", "-t", "nat", "-A", *self.spec())

    def delete(self) -> list[str]:
        _run("iptables", "-t", "nat", "-D", *self.spec())
        still_there = _run("iptables", "-t", "nat", "-C", *self.spec()).returncode == 0
        return [f"iptables rule {' '.join(self.spec())}"] if still_there else []


class ProxyProcess:
    """`failcore proxy --json` in a child process; knows its address once the JSON banner is out."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "failcore.cli", "proxy", "--json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        self.info = self._read_banner()

    def _read_banner(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + PROXY_START_TIMEOUT
        text = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if not ready:
                if self.proc.poll() is not None:
                    break
                continue
            # os.read, not readline: a buffered reader would hide data from the next select().
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                break
            text += chunk.decode(errors="replace")
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                continue
        self.stop()
        raise RuntimeError(f"failcore proxy did not start: stdout={text!r} stderr={self.stderr!r}")

    @property
    def port(self) -> int:
        return int(self.info["address"].rsplit(":", 1)[1])

    @property
    def stderr(self) -> str:
        return self.proc.stderr.read().decode(errors="replace") if self.proc.stderr and self.done else ""

    @property
    def done(self) -> bool:
        return self.proc.poll() is not None

    def stop(self) -> int:
        """SIGTERM is failcore's orderly shutdown: it flushes and closes the tape before exiting."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def _client_env() -> dict[str, str]:
    """The transparent client must not know about any proxy, so scrub every proxy variable."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def _proxy_env(confdir: Path) -> dict[str, str]:
    env = _client_env()
    env["FAILCORE_HOME"] = str(confdir)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# Either one set makes a missing prerequisite a failure: CI must run this test, never skip it.
REQUIRED_BY = ("CI", REQUIRE_ENV)


@pytest.fixture
def netns() -> Iterator[VethNamespace]:
    require(_missing_prerequisite(), required_by=REQUIRED_BY)
    ns = VethNamespace.random()
    try:
        ns.create()
    except RuntimeError as e:
        leftovers = ns.delete()
        if "Operation not permitted" in str(e) and not leftovers:
            skip_or_fail(f"root here lacks CAP_NET_ADMIN/CAP_SYS_ADMIN ({e})", required_by=REQUIRED_BY)
        raise
    try:
        yield ns
    finally:
        leftovers = ns.delete()
        assert not leftovers, f"could not clean up: {leftovers}"


@pytest.mark.timeout(60)
def test_transparent_mode_records_redirected_https(
    netns: VethNamespace, confdir: Path, tmp_path: Path
) -> None:
    tape = tmp_path / "tape"
    with StandIn(host=netns.host_ip, workdir=tmp_path / "standin") as upstream:
        proxy = ProxyProcess(
            [
                "--mode",
                "transparent",
                "--listen-host",
                netns.host_ip,
                "--port",
                "0",
                "--tape",
                str(tape),
                "--confdir",
                str(confdir),
                "--set",
                f"ssl_verify_upstream_trusted_ca={upstream.ca_path}",
            ],
            _proxy_env(confdir),
        )
        rule = RedirectRule(netns.host_if, netns.host_ip, upstream.port, proxy.port)
        try:
            rule.add()
            result = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    netns.name,
                    "curl",
                    "-sS",
                    "--noproxy",
                    "*",
                    "--max-time",
                    "20",
                    "--cacert",
                    proxy.info["ca_cert"],
                    "-w",
                    "\n%{http_code}",
                    f"https://{netns.host_ip}:{upstream.port}/json",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                env=_client_env(),
                check=False,
            )
        finally:
            leftovers = rule.delete()
            exit_code = proxy.stop()
        assert not leftovers, f"could not clean up: {leftovers}"
        served = len(upstream.requests)

    assert result.returncode == 0, f"curl failed: {result.stderr}\nproxy stderr: {proxy.stderr}"
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "200"
    assert json.loads(body) == SAMPLE_DOCUMENT
    assert served == 1, "the stand-in must have answered exactly the one request that went through failcore"
    assert exit_code == 0, proxy.stderr

    events = network_events(read_tape(tape))
    assert len(events) == 1, events
    event = events[0]
    assert event["target"]["host"] == netns.host_ip
    assert event["target"]["port"] == upstream.port
    assert event["target"]["scheme"] == "https"
    assert event["status"] == 200
    assert event["outcome"] == "ok"


@pytest.mark.parametrize("required_by", ["CI", REQUIRE_ENV])
def test_missing_prerequisites_fail_instead_of_skipping_in_ci(
    monkeypatch: pytest.MonkeyPatch, required_by: str
) -> None:
    """The guard above, with its prerequisites taken away: CI gets a failure, not a skip."""
    for name in REQUIRED_BY:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    reason = _missing_prerequisite()
    assert reason
    with pytest.raises(pytest.skip.Exception, match=re.escape(reason)):
        require(reason, required_by=REQUIRED_BY)
    monkeypatch.setenv(required_by, "1" if required_by == REQUIRE_ENV else "true")
    with pytest.raises(pytest.fail.Exception, match=re.escape(reason)):
        require(reason, required_by=REQUIRED_BY)
