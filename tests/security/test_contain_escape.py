"""Attack: a contained command (root, as `sudo failcore run --contain` starts it) tries to leave its network
namespace, or to reroute it, to reach an upstream on the host's loopback directly.

Had it kept CAP_SYS_ADMIN, `nsenter --net=/proc/1/ns/net` (or setns) would put it in the host's
namespace, where 127.0.0.1 is the upstream and no rule of failcore applies. The upstream must receive
nothing, and the one request made the legitimate way must be the only thing it sees.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.contain_helpers import contained_run, containment_leftovers, destination_address
from tests.helpers import network_events, read_tape
from tests.security.upstream import LoggingUpstream

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

ATTEMPTS = r"""
import json, os, socket, ssl, subprocess, sys
loopback_port, address, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
results = {}
def attempt(name, fn):
    try:
        results[name] = fn()
    except Exception as e:
        results[name] = f"refused: {type(e).__name__}: {e}"
def setns():
    os.setns(os.open("/proc/1/ns/net", os.O_RDONLY), os.CLONE_NEWNET)
    return socket.create_connection(("127.0.0.1", loopback_port), timeout=5).send(b"ESCAPED-setns")
attempt("setns", setns)
def nsenter():
    url = f"https://127.0.0.1:{loopback_port}/ESCAPED-nsenter"
    done = subprocess.run(["nsenter", "--net=/proc/1/ns/net", "curl", "-sk", "--max-time", "5", url],
                          capture_output=True, text=True)
    if done.returncode:
        raise PermissionError(done.stderr.strip())
    return done.stdout
attempt("nsenter", nsenter)
def reroute():
    done = subprocess.run(["ip", "route", "replace", "default", "dev", "lo"], capture_output=True, text=True)
    if done.returncode:
        raise PermissionError(done.stderr.strip())
    return "rerouted"
attempt("reroute", reroute)
def raw_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    return s.sendto(b"ESCAPED-raw", (address, 9))
attempt("raw", raw_socket)
ctx = ssl.create_default_context()
with socket.create_connection((address, port), timeout=10) as s:
  with ctx.wrap_socket(s, server_hostname=address) as t:
    t.sendall(f"GET /legit HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode())
    results["legit"] = t.recv(100).split(b" ")[1].decode()
print(json.dumps(results), flush=True)
"""


@pytest.fixture
def address() -> Iterator[str]:
    yield from destination_address()


def test_contained_command_cannot_leave_its_namespace(address: str, tmp_path: Path) -> None:
    before = containment_leftovers()
    script = tmp_path / "attempts.py"
    script.write_text(ATTEMPTS)
    with (
        LoggingUpstream(tmp_path / "loopback") as loopback,
        LoggingUpstream(tmp_path / "legit", host=address) as legit,
    ):
        result = contained_run(
            tmp_path / "home",
            tmp_path / "tape",
            [sys.executable, str(script), str(loopback.port), address, str(legit.port)],
            "--set",
            f"ssl_verify_upstream_trusted_ca={legit.ca_path}",
        )
        loopback_saw = loopback.received_bytes()
        loopback_connections = len(loopback.connections)
        legit_saw = legit.received_bytes()
    assert result.returncode == 0, result.stderr
    attempts = next(orjson.loads(x) for x in result.stderr.splitlines() if x.startswith('{"setns"'))
    for name in ("setns", "nsenter", "reroute", "raw"):
        assert str(attempts[name]).startswith("refused"), attempts
    assert attempts["legit"] == "200", attempts
    assert loopback_connections == 0 and b"ESCAPED" not in loopback_saw
    assert b"GET /legit" in legit_saw and b"ESCAPED" not in legit_saw
    events = network_events(read_tape(tmp_path / "tape"))
    assert [e["path"] for e in events if e["action"] == "http.request"] == ["/legit"]
    assert orjson.loads(result.stdout)["requests"] == 1
    assert containment_leftovers() == before
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).returncode == 0
