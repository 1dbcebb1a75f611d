"""`failcore run` starts the command while mitmproxy loads (failcore.quickstart).

Each run here is a real `failcore run` subprocess. A gate module added to what the background thread loads
holds "mitmproxy loaded" until the child says it has connected (or forever): so the child's connection
is made, deterministically, before the proxy can accept it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.helpers import network_events, read_tape
from tests.quickstart_helpers import REPO, describe, run_gated
from tests.security.upstream import LoggingUpstream

pytestmark = pytest.mark.timeout(180)

# Connects to the proxy, sends one request, says so, then reads the answer (or, with "exit", leaves
# without reading it).
CHILD = textwrap.dedent(
    """
    import os, socket, sys
    from base64 import b64encode
    from pathlib import Path
    from urllib.parse import urlsplit
    proxy = urlsplit(os.environ["HTTP_PROXY"])
    auth = b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
    target = sys.argv[1] + "/early"
    sock = socket.create_connection((proxy.hostname, proxy.port), timeout=60)
    sock.sendall(
        f"GET {target} HTTP/1.1\\r\\nHost: {urlsplit(target).netloc}\\r\\n"
        f"Proxy-Authorization: Basic {auth}\\r\\nConnection: close\\r\\n\\r\\n".encode()
    )
    Path(os.environ["GATE_MARKER"]).write_text("connected")
    if sys.argv[2] == "exit":
        sys.exit(0)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    print(answer.split(b"\\r\\n", 1)[0].decode(), file=sys.stderr)
    sys.exit(0 if b" 200 " in answer.split(b"\\r\\n", 1)[0] else 5)
    """
)


@pytest.fixture
def plain_logging_upstream(tmp_path: Path) -> Iterator[LoggingUpstream]:
    with LoggingUpstream(tmp_path / "logging-upstream-plain", tls=False) as up:
        yield up


def test_a_connection_made_before_mitmproxy_loaded_gets_through_and_is_recorded(
    tmp_path: Path, plain_logging_upstream: LoggingUpstream
) -> None:
    up = plain_logging_upstream
    result, tape = run_gated(tmp_path, sys.executable, "-c", CHILD, up.url, "wait")
    assert result.returncode == 0, describe(result)
    assert b"GET /early HTTP/1.1" in up.received_bytes()
    summary = orjson.loads(result.stdout)
    assert summary["requests"] == 1 and summary["warnings"] == []
    events = [e for e in read_tape(tape) if e.get("run") == summary["run"]]
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "run_start" and "run_end" in kinds
    (exchange,) = network_events(events)
    assert (exchange["path"], exchange["status"], exchange["outcome"]) == ("/early", 200, "ok")


def test_a_request_sent_by_a_command_that_exits_before_mitmproxy_loaded_is_still_recorded(
    tmp_path: Path, plain_logging_upstream: LoggingUpstream
) -> None:
    """The command leaves with its request waiting in the listen backlog: `run` must not record a quiet
    run and drop it, nor let it through unrecorded. (mitmproxy sees the client gone and does not forward
    it, as it would for a client that left while the proxy was up.)"""
    up = plain_logging_upstream
    result, tape = run_gated(tmp_path, sys.executable, "-c", CHILD, up.url, "exit")
    assert result.returncode == 0, describe(result)
    summary = orjson.loads(result.stdout)
    events = [e for e in read_tape(tape) if e.get("run") == summary["run"]]
    (exchange,) = network_events(events)
    assert exchange["path"] == "/early"
    if b"GET /early" in up.received_bytes():
        assert exchange["status"] == 200
    else:
        assert exchange["outcome"] != "ok"
    assert summary["requests"] == 1


def test_a_command_without_network_gets_run_start_and_run_end_without_waiting_for_mitmproxy(
    tmp_path: Path,
) -> None:
    """The gate never opens (no child connects): `run` must finish anyway, with the run on the tape."""
    result, tape = run_gated(tmp_path, sys.executable, "-c", "import sys; sys.exit(3)")
    assert result.returncode == 3, describe(result)
    assert "Traceback" not in result.stderr and "never retrieved" not in result.stderr, describe(result)
    summary = orjson.loads(result.stdout)
    assert summary["exit_code"] == 3 and summary["requests"] == 0
    assert any("made no request through failcore" in w for w in summary["warnings"])
    events = [e for e in read_tape(tape) if e.get("run") == summary["run"]]
    assert [e["kind"] for e in events] == ["run_start", "policy", "run_end", "checkpoint"]
    start, policy, end, _ = events
    assert start["detail"]["policy"].endswith("default.yaml") and start["detail"]["mode"] == "observe"
    assert policy["detail"]["action"] == "policy.load" and policy["detail"]["ok"]
    assert policy["detail"]["active_sha256"] == start["detail"]["policy_sha256"]
    assert end["detail"]["requests"] == 0
    verify = subprocess.run(
        [sys.executable, "-m", "failcore.cli", "verify", "--tape", str(tape)],
        env={**os.environ, "FAILCORE_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, describe(verify)


def test_the_proxy_failing_to_load_after_the_command_started_stops_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "still-running"
    child = f"import time, pathlib; time.sleep(60); pathlib.Path({str(marker)!r}).write_text('x')"
    result, _ = run_gated(tmp_path, sys.executable, "-c", child, fail=True)
    assert result.returncode == 2, describe(result)
    assert "could not load the proxy" in result.stderr and "gate says no" in result.stderr
    assert "the command was stopped" in result.stderr
    assert not marker.exists()


def test_the_summary_of_a_run_appended_to_a_tape_counts_that_run_only(
    tmp_path: Path, plain_logging_upstream: LoggingUpstream
) -> None:
    """`run` summarises from the segment open when it started (not the whole tape): a second run on the
    same tape still finds its own request, and not the first run's."""
    up = plain_logging_upstream
    first, tape = run_gated(tmp_path, sys.executable, "-c", CHILD, up.url, "wait")
    assert first.returncode == 0, describe(first)
    (tmp_path / "connected").unlink()
    second, _ = run_gated(tmp_path, sys.executable, "-c", CHILD, up.url, "wait")
    assert second.returncode == 0, describe(second)
    summary = orjson.loads(second.stdout)
    assert summary["run"] != orjson.loads(first.stdout)["run"]
    assert summary["requests"] == 1
    assert len(list(tape.glob("seg-*.jsonl"))) >= 2
