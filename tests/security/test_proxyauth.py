"""Attack: another local user sends traffic through a `failcore run` proxy (issue 9, "decide").

The loopback proxy of `failcore run` accepted anyone on the host, who could then use it and write into
its owner's tape. Now the run's proxy requires a random per-run credential that only the child gets
(in its proxy URL variables). The child here makes one request with what it was given and then waits
while the test, knowing only the port, tries without the credential."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helpers import network_events, read_tape
from tests.security.upstream import LoggingUpstream

pytestmark = pytest.mark.timeout(180)

CHILD = textwrap.dedent(
    """
    import os, sys, time, urllib.request
    from pathlib import Path
    work = Path(sys.argv[1])
    proxy = os.environ["HTTP_PROXY"]
    (work / "proxy").write_text(proxy)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    print(opener.open(sys.argv[2] + "/child-request", timeout=30).status, flush=True)
    deadline = time.monotonic() + 60
    while not (work / "done").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    """
)


def test_other_users_cannot_use_the_run_proxy(
    tmp_path: Path, confdir: Path, plain_logging_upstream: LoggingUpstream
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    tape = tmp_path / "tape"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["FAILCORE_HOME"] = str(confdir)
    run = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "failcore"), "run", "--tape", str(tape),
            "--", sys.executable, "-c", CHILD, str(work), plain_logging_upstream.url,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not (work / "proxy").exists():
            assert run.poll() is None and time.monotonic() < deadline, run.stdout.read().decode()  # type: ignore[union-attr]
            time.sleep(0.05)
        given = urlsplit((work / "proxy").read_text())
        assert given.username == "failcore" and len(given.password or "") >= 24
        authority = f"127.0.0.1:{plain_logging_upstream.port}"
        answers = []
        for extra in ("", "Proxy-Authorization: Basic ZmFpbGNvcmU6Z3Vlc3M=\r\n"):  # failcore:guess
            with socket.create_connection((given.hostname, given.port), timeout=30) as s:
                s.sendall(
                    f"GET http://{authority}/intruder HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n".encode()
                )
                answers.append(s.recv(65536))
            with socket.create_connection((given.hostname, given.port), timeout=30) as s:
                s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n".encode())
                answers.append(s.recv(65536))
    finally:
        (work / "done").write_text("")
        output = run.communicate(timeout=120)[0].decode(errors="replace")
    assert run.returncode == 0, output
    assert all(a.startswith(b"HTTP/1.1 407") for a in answers), answers
    seen = plain_logging_upstream.received_bytes()
    assert b"/child-request" in seen and b"/intruder" not in seen
    paths = [(e["path"], e["status"]) for e in network_events(read_tape(tape)) if e["decision"] != "BLOCK"]
    assert ("/child-request", 200) in paths
    assert not [p for p in paths if p[0] == "/intruder" and p[1] != 407]
    # The credential itself is never on the tape.
    assert given.password.encode() not in b"".join(p.read_bytes() for p in tape.glob("seg-*.jsonl"))
