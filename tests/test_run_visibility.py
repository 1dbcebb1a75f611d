"""What did not reach failcore is said plainly: TLS handshakes a client refused are events and counted,
`failcore run` warns when the command made no request or refused failcore's CA, `--json` stays
parseable whatever the command prints, `ca`/`proxy` print the lowercase variables curl reads, and
`--contain` without its prerequisites says what is missing. Plus the pure parts of containment."""

from __future__ import annotations

import ipaddress
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from failcore import contain
from failcore.demo.server import StandIn
from failcore.runs import summarize
from tests.contain_helpers import REPO
from tests.helpers import SCHEMA, read_tape

CLI_TIMEOUT = 120


def failcore(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(FAILCORE_HOME=str(home), PYTHONPATH=str(REPO), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "failcore.cli", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=env,
        cwd=REPO,
        check=False,
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("visibility") / "home"


def _schema_ok(event: dict) -> None:  # type: ignore[type-arg]
    import jsonschema

    jsonschema.validate(event, SCHEMA)


# ---------------------------------------------------------------- TLS refused by the client


def test_a_client_that_rejects_failcores_ca_is_an_event_and_a_warning(
    home: Path, upstream: StandIn, tmp_path: Path
) -> None:
    curl = shutil.which("curl")
    assert curl
    # --cacert: curl trusts only the stand-in's own certificate, so it refuses the one failcore forges.
    result = failcore(
        home,
        "run",
        "--tape",
        str(tmp_path / "tape"),
        "--",
        curl,
        "-sS",
        "--max-time",
        "30",
        "--cacert",
        str(upstream.ca_path),
        f"{upstream.url}/json",
    )
    assert result.returncode != 0, result.stderr
    events = [e for e in read_tape(tmp_path / "tape") if e.get("action") == "tls.handshake"]
    assert len(events) == 1, read_tape(tmp_path / "tape")
    (event,) = events
    _schema_ok(event)
    assert (event["outcome"], event["fail_reason"]) == ("FAIL", "tls_error")
    assert (event["target"]["host"], event["target"]["port"]) == ("127.0.0.1", upstream.port)
    # What the client said: curl sends an "unknown ca" alert.
    assert "unknown ca" in event["error"], event["error"]
    assert "TLS failed" in result.stderr and "1 (127.0.0.1:" in result.stderr
    assert "failcore ca" in result.stderr and "SSL_CERT_FILE" in result.stderr
    (summary,) = summarize(read_tape(tmp_path / "tape"))
    assert summary.tls_failures == 1 and summary.requests == 0


# ---------------------------------------------------------------- run's summary and --json


def test_run_warns_when_the_command_made_no_request(home: Path, tmp_path: Path) -> None:
    result = failcore(home, "run", "--tape", str(tmp_path / "tape"), "--", sys.executable, "-c", "pass")
    assert result.returncode == 0, result.stderr
    assert "warning: the command made no request through failcore" in result.stderr
    assert "--contain" in result.stderr


def test_run_json_is_pipe_safe(home: Path, tmp_path: Path) -> None:
    command = "print('child says hello'); print('{\"not\": \"the summary\"}')"
    result = failcore(
        home, "run", "--json", "--tape", str(tmp_path / "tape"), "--", sys.executable, "-c", command
    )
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(result.stdout)  # the whole of stdout is one JSON document
    assert summary["exit_code"] == 0 and summary["requests"] == 0
    assert any("no request" in w for w in summary["warnings"])
    assert "child says hello" in result.stderr


@pytest.mark.parametrize("command", [("ca", "--port", "8123")])
def test_ca_prints_the_lowercase_proxy_variables(home: Path, command: tuple[str, ...]) -> None:
    result = failcore(home, *command)
    assert result.returncode == 0, result.stderr
    lines = {line.strip() for line in result.stdout.splitlines()}
    for name in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        assert f"export {name}=http://127.0.0.1:8123" in lines, result.stdout


# ---------------------------------------------------------------- --contain prerequisites


def test_missing_prerequisites_name_what_and_what_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contain.sys, "platform", "linux")
    monkeypatch.setattr(contain.os, "geteuid", lambda: 1000)
    message = contain.missing_prerequisites(lambda tool: None if tool == "iptables" else f"/usr/bin/{tool}")
    assert message is not None
    assert "root" in message and "sudo" in message
    assert "iptables (Debian/Ubuntu: apt-get install iptables)" in message
    assert "failcore run -- CMD" in message and "--mode transparent" in message
    monkeypatch.setattr(contain.os, "geteuid", lambda: 0)
    assert contain.missing_prerequisites(lambda tool: f"/usr/bin/{tool}") is None
    monkeypatch.setattr(contain.sys, "platform", "darwin")
    assert "Linux" in (contain.missing_prerequisites() or "")


@pytest.mark.skipif(os.geteuid() == 0, reason="checks the message a non-root user gets")
def test_contain_as_a_user_stops_with_the_message(home: Path, tmp_path: Path) -> None:
    result = failcore(home, "run", "--contain", "--tape", str(tmp_path / "tape"), "--", "true")
    assert result.returncode == 2
    assert "--contain needs root" in result.stderr and "Traceback" not in result.stderr


def test_contain_rejects_mode(home: Path, tmp_path: Path) -> None:
    result = failcore(home, "run", "--contain", "--mode", "regular", "--", "true")
    assert result.returncode == 2
    assert "leave out --mode" in result.stderr


# ---------------------------------------------------------------- what a packet tried to reach


def ipv4(proto: int, dst: str, payload: bytes, *, fragment_offset: int = 0) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        1,
        fragment_offset,
        64,
        proto,
        0,
        ipaddress.IPv4Address("10.233.0.2").packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + payload


def ports(src: int, dst: int) -> bytes:
    return struct.pack("!HH", src, dst) + b"\x00" * 4


def test_refused_packet_names_protocol_destination_and_port() -> None:
    udp = contain.refused_packet(contain.ETH_P_IP, ipv4(17, "192.0.2.9", ports(5000, 443) + b"quic"))
    assert udp == contain.Refused("udp", "192.0.2.9", 443)
    icmp = contain.refused_packet(contain.ETH_P_IP, ipv4(1, "192.0.2.9", b"\x08\x00\x00\x00"))
    assert icmp == contain.Refused("icmp", "192.0.2.9", 0)
    assert contain.refused_packet(contain.ETH_P_IP, ipv4(47, "192.0.2.9", b"")) == contain.Refused(
        "ip-proto-47", "192.0.2.9", 0
    )
    v6 = struct.pack("!IHBB", 0x60000000, 8, 17, 64) + bytes(16) + ipaddress.IPv6Address("2001:db8::1").packed
    assert contain.refused_packet(contain.ETH_P_IPV6, v6 + ports(1, 53)) == contain.Refused(
        "udp", "2001:db8::1", 53
    )
    tcp6 = (
        struct.pack("!IHBB", 0x60000000, 8, 6, 64) + bytes(16) + ipaddress.IPv6Address("2001:db8::1").packed
    )
    assert contain.refused_packet(contain.ETH_P_IPV6, tcp6 + ports(1, 443)) == contain.Refused(
        "tcp", "2001:db8::1", 443
    )


def test_what_goes_to_failcore_is_not_refused() -> None:
    assert contain.refused_packet(contain.ETH_P_IP, ipv4(6, "192.0.2.9", ports(5000, 443))) is None
    assert contain.refused_packet(contain.ETH_P_IP, ipv4(17, "8.8.8.8", ports(5000, 53))) is None
    own_dns = ipv4(17, "10.233.0.1", ports(5000, 40001))
    assert contain.refused_packet(contain.ETH_P_IP, own_dns, 40001, "10.233.0.1") is None
    assert contain.refused_packet(contain.ETH_P_IP, own_dns, 40002, "10.233.0.1") is not None
    # A later fragment carries no ports; its first fragment was already judged.
    later = ipv4(17, "192.0.2.9", b"\x00" * 8, fragment_offset=100)
    assert contain.refused_packet(contain.ETH_P_IP, later) is None
    assert contain.refused_packet(0x0806, b"\x00" * 28) is None  # ARP
    assert contain.refused_packet(contain.ETH_P_IP, b"\x45\x00") is None  # truncated


def test_refused_event_matches_the_schema_and_counts_apart_from_requests() -> None:
    event = contain.refused_event("run-x", contain.Refused("udp", "192.0.2.9", 443), 1.0)
    icmp = contain.refused_event("run-x", contain.Refused("icmp", "192.0.2.9", 0), 2.0)
    for e in (event, icmp):
        _schema_ok({**e, "prev": "0" * 64, "seq": 1, "h": "0" * 64})
    assert (event["decision"], event["outcome"], event["rule"]) == ("BLOCK", "BLOCKED", "contain")
    assert icmp["target"]["scheme"] == "ip" and icmp["detail"] == {"protocol": "icmp"}
    (summary,) = summarize([event, icmp])
    assert (summary.requests, summary.blocked, summary.refused) == (0, 2, 2)
    assert summary.refused_targets == {"udp 192.0.2.9:443": 1, "icmp 192.0.2.9": 1}


# ---------------------------------------------------------------- local capture start-up


def _local_capture(home: Path, tape: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(FAILCORE_HOME=str(home), PYTHONPATH=str(REPO), COLUMNS="200")
    command = [sys.executable, "-m", "failcore.cli", "run", "--mode", "local:python3", "--tape", str(tape)]
    return subprocess.Popen(
        [*command, "--", sys.executable, "-c", "pass"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )


def _assert_clean_failure(code: int, stderr: str) -> None:
    assert code == 2, stderr
    for noise in ("Traceback", "Stack backtrace", "type_id=", "Segmentation"):
        assert noise not in stderr, stderr
    assert "proxy could not start" in stderr and "--contain" in stderr, stderr
    assert len(stderr.splitlines()) <= 25, stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mitmproxy's Linux redirector")
def test_local_capture_that_cannot_start_says_so_in_one_message(home: Path, tmp_path: Path) -> None:
    proc = _local_capture(home, tmp_path / "tape")
    _, stderr = proc.communicate(timeout=CLI_TIMEOUT)
    if proc.returncode == 0:
        pytest.skip("local capture works on this machine: there is no start-up failure to report")
    _assert_clean_failure(proc.returncode, stderr)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mitmproxy's Linux redirector")
def test_ctrl_c_while_local_capture_starts_prints_no_traceback(home: Path, tmp_path: Path) -> None:
    import signal
    import time

    tape = tmp_path / "tape"
    proc = _local_capture(home, tape)
    # The tape opens once mitmproxy calls the mode started: failcore then waits for the redirector.
    while proc.poll() is None and not tape.exists():
        time.sleep(0.02)
    if proc.poll() is not None:  # it failed before that point (no sudo here): that message is checked
        _assert_clean_failure(proc.returncode, proc.communicate()[1])
        return
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=CLI_TIMEOUT)
    assert "Traceback" not in stderr, stderr
    assert proc.returncode in (2, 130), stderr
