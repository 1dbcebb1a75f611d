"""The addon as a user runs it: the real `mitmdump -s addons/failcore_addon.py` binary in a subprocess.

Each test starts mitmdump from a scratch directory (not the repository) with PYTHONPATH unset, so the
addon must find failcore on its own, and drives it with curl against the local HTTPS stand-in.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from failcore.demo.server import StandIn
from failcore.tape.keys import load_or_create_signing_key, public_key_id
from tests.helpers import network_events, read_tape

REPO = Path(__file__).resolve().parent.parent
ADDON = REPO / "addons" / "failcore_addon.py"
MITMDUMP = Path(sys.executable).parent / "mitmdump"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
# Variables from the developer's shell that would send curl elsewhere or change what it trusts.
INHERITED_NOISE = {
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "ssl_cert_file",
    "ssl_cert_dir",
    "curl_ca_bundle",
    "requests_ca_bundle",
    "pythonpath",
    "failcore_home",
}

pytestmark = pytest.mark.timeout(180)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in INHERITED_NOISE}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mitmdump:
    process: subprocess.Popen[bytes]
    port: int
    confdir: Path
    tape: Path
    log: Path
    home: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"mitmdump exited with {self.process.returncode}:\n{self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"mitmdump did not listen on {self.port} within {START_TIMEOUT}s:\n{self.output()}")

    def interrupt(self) -> int:
        """Ctrl-C, as a user stops it; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
            pytest.fail(f"mitmdump ignored SIGINT for {STOP_TIMEOUT}s:\n{self.output()}")

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert shutil.which("curl"), "curl is required for the tests"
        cmd = ["curl", "-sS", "--proxy", self.url, "--cacert", str(self.ca_cert), "--max-time", "30", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=clean_env())


def mitmdump_command(port: int, confdir: Path, tape: Path, upstream: StandIn, *sets: str) -> list[str]:
    cmd = [
        str(MITMDUMP),
        "-s",
        str(ADDON),
        "--listen-host",
        "127.0.0.1",
        "-p",
        str(port),
        "--set",
        f"confdir={confdir}",
        "--set",
        f"failcore_tape={tape}",
        "--set",
        f"ssl_verify_upstream_trusted_ca={upstream.ca_path}",
    ]
    for option in sets:
        cmd += ["--set", option]
    return cmd


Launch = Callable[..., Mitmdump]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working directory outside the repository, so nothing is importable from the cwd."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


@pytest.fixture
def launch(tmp_path: Path, workdir: Path, upstream: StandIn) -> Iterator[Launch]:
    started: list[Mitmdump] = []

    def start(*sets: str) -> Mitmdump:
        port = free_port()
        confdir, tape = tmp_path / "mitm-conf", tmp_path / "tape"
        log = tmp_path / f"mitmdump-{len(started)}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                mitmdump_command(port, confdir, tape, upstream, *sets),
                cwd=workdir,
                env=clean_env(FAILCORE_HOME=str(tmp_path / "home")),
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        dump = Mitmdump(process, port, confdir, tape, log, tmp_path / "home")
        started.append(dump)
        dump.wait_listening()
        return dump

    yield start
    for dump in started:
        if dump.process.poll() is None:
            dump.process.kill()
            dump.process.wait(STOP_TIMEOUT)


def failcore_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = clean_env(FAILCORE_HOME=str(home), PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "failcore.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_addon_records_a_verifiable_tape_with_the_default_policy(
    launch: Launch, upstream: StandIn, workdir: Path
) -> None:
    dump = launch()

    result = dump.curl(f"{upstream.url}/json")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["service"] == "failcore-standin"
    assert dump.interrupt() == 0, dump.output()

    events = read_tape(dump.tape)
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "run_start"
    assert "run_end" in kinds
    assert kinds[-1] == "checkpoint"
    policy_loads = [e for e in events if e["kind"] == "policy"]
    assert policy_loads and policy_loads[0]["detail"]["action"] == "policy.load"
    assert policy_loads[0]["detail"]["mode"] == "observe"
    (exchange,) = network_events(events)
    assert exchange["decision"] == "ALLOW"
    assert exchange["outcome"] == "ok"
    assert exchange["status"] == 200
    assert exchange["path"] == "/json"
    assert exchange["target"] == {"host": "127.0.0.1", "port": upstream.port, "scheme": "https"}
    assert {e["run"] for e in events} == {events[0]["run"]}

    # One signing identity per user: mitmdump signs with the key in failcore's home (FAILCORE_HOME), not
    # one in mitmproxy's confdir, so a plain `failcore verify` knows it.
    verify = failcore_cli("verify", str(dump.tape), home=dump.home)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "intact" in verify.stdout


def test_mitmdump_signs_with_the_users_one_identity(
    launch: Launch, tmp_path: Path, upstream: StandIn
) -> None:
    """Issue 10: with a key in ~/.failcore and another in mitmproxy's confdir (where older versions kept
    the addon's key), mitmdump's tape was called BROKEN by `failcore verify`: a false tamper alarm."""
    home_key = load_or_create_signing_key(tmp_path / "home")
    load_or_create_signing_key(tmp_path / "mitm-conf")  # the confdir key an older version created
    dump = launch()
    assert dump.curl("-o", "/dev/null", f"{upstream.url}/json").returncode == 0
    assert dump.interrupt() == 0, dump.output()
    verify = failcore_cli("verify", str(dump.tape), home=dump.home)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith("OK")
    checkpoints = [e for e in read_tape(dump.tape) if e["kind"] == "checkpoint"]
    assert {c["key_id"] for c in checkpoints} == {public_key_id(home_key.public_key())}
    assert checkpoints[-1]["final"] is True


def test_invalid_policy_stops_mitmdump_with_file_line_column(
    tmp_path: Path, workdir: Path, upstream: StandIn
) -> None:
    (workdir / "bad.yaml").write_text("version: 1\nmode: enforce\ncolour: blue\ndefault: ALLOW\n")
    cmd = mitmdump_command(
        free_port(), tmp_path / "conf", tmp_path / "tape", upstream, "failcore_policy=bad.yaml"
    )
    result = subprocess.run(cmd, cwd=workdir, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "bad.yaml:3:1" in output, output
    assert "colour" in output
    assert not list((tmp_path / "tape").glob("seg-*.jsonl")), "a refused start must not record a run"


ENFORCE_POLICY = """\
version: 1
mode: enforce
default: ALLOW
rules:
  - id: no-files
    host: 127.0.0.1
    path: /v1/files
    action: BLOCK
    reason: agents may not touch files
  - id: off-limits
    host: blocked.example
    action: BLOCK
    reason: this host is off limits
"""


def split_http_response(raw: str) -> tuple[int, dict[str, str], str]:
    """curl -i output: the status, headers (lower-cased names) and body of the final response."""
    head, _, body = raw.replace("\r\n", "\n").partition("\n\n")
    status_line, *header_lines = head.splitlines()
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def test_enforce_policy_blocks_requests_and_tunnels(launch: Launch, upstream: StandIn, workdir: Path) -> None:
    (workdir / "enforce.yaml").write_text(ENFORCE_POLICY)
    dump = launch(f"failcore_policy={workdir / 'enforce.yaml'}")
    files_before = upstream.request_count("/v1/files")

    blocked = dump.curl(
        "-i", "--suppress-connect-headers", "-X", "POST", "--data", "{}", f"{upstream.url}/v1/files"
    )
    assert blocked.returncode == 0, blocked.stderr
    status, headers, body = split_http_response(blocked.stdout)
    assert status == 403
    assert headers["x-failcore-decision"] == "BLOCK"
    assert headers["x-failcore-rule"] == "no-files"
    error = orjson.loads(body)["error"]
    assert error["type"] == "failcore_blocked"
    assert error["rule"] == "no-files"
    assert error["reason"] == "agents may not touch files"
    assert upstream.request_count("/v1/files") == files_before

    allowed = dump.curl(f"{upstream.url}/json")
    assert allowed.returncode == 0, allowed.stderr
    assert orjson.loads(allowed.stdout)["service"] == "failcore-standin"

    tunnel = dump.curl("https://blocked.example/anything")
    assert tunnel.returncode != 0
    assert "403" in tunnel.stderr, tunnel.stderr
    assert dump.interrupt() == 0, dump.output()

    exchanges = network_events(read_tape(dump.tape))
    by_path = {(e["action"], e["target"]["host"], e.get("path")): e for e in exchanges}
    files = by_path[("http.request", "127.0.0.1", "/v1/files")]
    assert (files["decision"], files["outcome"], files["status"]) == ("BLOCK", "BLOCKED", 403)
    assert by_path[("http.request", "127.0.0.1", "/json")]["outcome"] == "ok"
    (connect,) = [e for e in exchanges if e["action"] == "http.connect"]
    assert connect["target"]["host"] == "blocked.example"
    assert connect["target"]["port"] == 443
    assert connect["decision"] == "BLOCK"
    assert connect["outcome"] == "BLOCKED"
    assert connect["rule"] == "off-limits"


def test_addon_binds_loopback_unless_told_otherwise() -> None:
    from mitmproxy.test import taddons

    from failcore.proxy import FailCore

    addon = FailCore()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, listen_host="")
        assert tctx.options.listen_host == "127.0.0.1"
        tctx.configure(addon, listen_host="0.0.0.0")
        assert tctx.options.listen_host == "0.0.0.0"
