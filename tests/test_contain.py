"""`failcore run --contain`: clients that ignore proxy variables are recorded anyway, nothing else leaves.

Every client here gets no proxy settings at all (failcore removes them in a contained run): curl,
aiohttp with its default trust_env=False, a raw-socket TLS client and Node's https module. Each must
reach the upstream through failcore, be on the tape with its original destination, and the upstream
must have seen exactly the connections the tape records (a client that went around failcore would
show up there with no event).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.contain_helpers import (
    REPO,
    child_env,
    contained_run,
    containment_leftovers,
    destination_address,
)
from tests.helpers import network_events, read_tape
from tests.security.upstream import LoggingUpstream

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

FAILCORE_RUN = (sys.executable, "-m", "failcore.cli", "run", "--contain")
CLIENTS = Path(__file__).resolve().parent / "data" / "contain_clients.py"


@pytest.fixture
def address() -> Iterator[str]:
    yield from destination_address()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def test_clients_that_ignore_proxy_variables_are_recorded(address: str, home: Path, tmp_path: Path) -> None:
    before = containment_leftovers()
    clients = ["curl", "aiohttp", "raw"] + (["node"] if shutil.which("node") else [])
    with LoggingUpstream(tmp_path / "up", host=address) as up:
        result = contained_run(
            home,
            tmp_path / "tape",
            [sys.executable, str(CLIENTS), "https", address, str(up.port), *clients],
            "--set",
            f"ssl_verify_upstream_trusted_ca={up.ca_path}",
        )
        upstream_saw = [bytes(c.data) for c in up.connections]
    assert result.returncode == 0, describe(result)
    summary = orjson.loads(result.stdout)
    # The clients' own output went to stderr: stdout holds the JSON summary only.
    for client in clients:
        assert f"{client} 200" in result.stderr, describe(result)
    events = network_events(read_tape(tmp_path / "tape"))
    exchanges = [e for e in events if e["action"] == "http.request"]
    assert sorted(e["path"] for e in exchanges) == sorted(f"/{c}" for c in clients)
    for e in exchanges:
        assert (e["target"]["host"], e["target"]["port"], e["target"]["scheme"]) == (
            address,
            up.port,
            "https",
        )
        assert (e["status"], e["outcome"]) == (200, "ok")
    # Everything the upstream received came through failcore: one connection per recorded exchange.
    assert len(upstream_saw) == len(exchanges), upstream_saw
    assert sorted(data.split(b" ", 2)[1].decode() for data in upstream_saw) == sorted(
        f"/{c}" for c in clients
    )
    assert summary["requests"] == len(clients) and summary["contained"] is True
    assert summary["refused"] == 0 and summary["warnings"] == []
    assert containment_leftovers() == before


def test_udp_and_non_http_tcp_are_refused_and_recorded_dns_resolves(
    address: str, home: Path, tmp_path: Path
) -> None:
    before = containment_leftovers()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((address, 0))
    udp.setblocking(False)
    udp_port = udp.getsockname()[1]
    with LoggingUpstream(tmp_path / "plain", tls=False, host=address) as plain:
        result = contained_run(
            home,
            tmp_path / "tape",
            [sys.executable, str(CLIENTS), "escape", address, str(plain.port), str(udp_port)],
        )
        plain_saw = plain.received_bytes()
    try:
        udp_saw = udp.recv(65535)
    except BlockingIOError:
        udp_saw = b""
    udp.close()
    assert result.returncode == 0, describe(result)
    report = next(orjson.loads(line) for line in result.stderr.splitlines() if line.startswith('{"dns"'))
    # DNS works through failcore, for the configured resolver and for any other one the client picks.
    assert report["dns"] == ["127.0.0.1", "127.0.0.1"], report
    # The address is local to the host, so its rules answer with an ICMP port unreachable at once.
    assert report["udp"] == "refused", report
    assert report["tcp"] == "closed", report
    assert udp_saw == b"" and plain_saw == b""
    events = network_events(read_tape(tmp_path / "tape"))
    blocked = {(e["action"], e["target"]["scheme"], e["target"]["host"], e["target"]["port"]) for e in events}
    assert ("ip.packet", "udp", address, udp_port) in blocked
    assert ("ip.packet", "udp", address, 443) in blocked
    assert ("tcp.stream", "tcp", address, plain.port) in blocked
    for e in events:
        assert (e["decision"], e["outcome"]) == ("BLOCK", "BLOCKED"), e
    summary = orjson.loads(result.stdout)
    assert summary["refused"] >= 2 and summary["blocked"] == len(events)
    assert containment_leftovers() == before


def _wait_for(predicate, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_ctrl_c_removes_namespace_veth_and_rules(home: Path, tmp_path: Path) -> None:
    from tests.contain_helpers import require_containment

    require_containment()
    before = containment_leftovers()
    # A daemonised grandchild would keep the namespace alive after `ip netns delete`: it must go too.
    script = "sleep 300 & echo started; sleep 300"
    proc = subprocess.Popen(
        [*FAILCORE_RUN, "--tape", str(tmp_path / "tape"), "--", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(home),
        cwd=REPO,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        assert containment_leftovers() != before
        # Ctrl-C in a terminal signals the whole foreground process group.
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "Traceback" not in stderr, stderr
    assert "failcore run" in stderr  # the summary still printed
    assert containment_leftovers() == before


def test_ctrl_c_during_setup_leaves_nothing(home: Path, tmp_path: Path) -> None:
    from tests.contain_helpers import require_containment

    require_containment()
    before = containment_leftovers()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "failcore.cli",
            "run",
            "--contain",
            "--tape",
            str(tmp_path / "tape"),
            "--",
            "true",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(home),
        cwd=REPO,
        start_new_session=True,
    )
    # As soon as the namespace exists (failcore is still starting the proxy), interrupt.
    assert _wait_for(lambda: containment_leftovers() != before or proc.poll() is not None)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    assert containment_leftovers() == before
