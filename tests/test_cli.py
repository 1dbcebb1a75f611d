"""The `failcore` command as a user runs it: every command is a real subprocess with its own FAILCORE_HOME,
talking to the local HTTPS stand-in through a real proxy."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from failcore.demo.server import StandIn
from tests.helpers import network_events, read_tape

REPO = Path(__file__).resolve().parent.parent
CLI_TIMEOUT = 120
STOP_TIMEOUT = 60
# Variables from the developer's shell that would send clients elsewhere or change what they trust.
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
    "columns",
}
HOSTILE = "\x1b[31m[bold]markup[/bold]\x07"

pytestmark = pytest.mark.timeout(300)


def child_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in INHERITED_NOISE}
    # failcore is not installed in the venv: the checkout is the package.
    env.update(FAILCORE_HOME=str(home), PYTHONPATH=str(REPO), **extra)
    return env


def failcore(home: Path, *args: str, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    extra = {"COLUMNS": str(columns)} if columns else {}
    return subprocess.run(
        [sys.executable, "-m", "failcore.cli", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=child_env(home, **extra),
    )


def failcore_run(
    home: Path, upstream: StandIn, tape: Path, *command: str, options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`failcore run` with the proxy trusting the stand-in's self-signed certificate upstream."""
    return failcore(
        home,
        "run",
        "--tape",
        str(tape),
        "--set",
        f"ssl_verify_upstream_trusted_ca={upstream.ca_path}",
        *options,
        "--",
        *command,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def curl_binary() -> str:
    path = shutil.which("curl")
    assert path, "curl is required for the tests"
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FAILCORE_HOME that starts empty: the first command creates the CA and signing key in it."""
    return tmp_path_factory.mktemp("cli-home") / "failcore"


@dataclass
class RecordedRun:
    result: subprocess.CompletedProcess[str]
    tape: Path


@pytest.fixture(scope="module")
def curl_run(home: Path, upstream: StandIn, tmp_path_factory: pytest.TempPathFactory) -> RecordedRun:
    """One `failcore run -- curl` whose tape the read-only commands (list, show, tail) inspect."""
    tape = tmp_path_factory.mktemp("curl-run") / "tape"
    result = failcore_run(
        home, upstream, tape, curl_binary(), "-sS", "--max-time", "30", f"{upstream.url}/json"
    )
    return RecordedRun(result, tape)


# ---------------------------------------------------------------- run


def test_run_sends_a_child_through_the_proxy(curl_run: RecordedRun, upstream: StandIn) -> None:
    result = curl_run.result
    assert result.returncode == 0, describe(result)
    assert orjson.loads(result.stdout)["service"] == "failcore-standin"
    assert re.search(r"requests\s+│?\s*1\b", result.stderr), describe(result)
    assert f"127.0.0.1:{upstream.port}" in result.stderr
    (exchange,) = network_events(read_tape(curl_run.tape))
    assert (exchange["path"], exchange["status"], exchange["outcome"]) == ("/json", 200, "ok")


def test_run_json_summary(home: Path, upstream: StandIn, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    result = failcore_run(
        home,
        upstream,
        tmp_path / "tape",
        curl_binary(),
        "-sS",
        "--max-time",
        "30",
        "-o",
        str(body),
        f"{upstream.url}/json",
        options=("--json",),
    )
    assert result.returncode == 0, describe(result)
    summary = orjson.loads(result.stdout)
    assert summary["requests"] == 1
    assert summary["hosts"] == {f"127.0.0.1:{upstream.port}": 1}
    assert summary["exit_code"] == 0
    assert summary["blocked"] == 0
    assert summary["tape"] == str(tmp_path / "tape")
    assert orjson.loads(body.read_bytes())["service"] == "failcore-standin"


def test_run_exits_with_the_childs_exit_code(home: Path, upstream: StandIn, tmp_path: Path) -> None:
    result = failcore_run(
        home, upstream, tmp_path / "tape", sys.executable, "-c", "raise SystemExit(7)", options=("--json",)
    )
    assert result.returncode == 7, describe(result)
    summary = orjson.loads(result.stdout)
    assert summary["exit_code"] == 7
    assert summary["requests"] == 0


SDK_CHILD = """\
import json
import sys

import httpx
import openai

url, out = sys.argv[1], sys.argv[2]
plain = httpx.get(url + "/json", timeout=30)
plain.raise_for_status()
client = openai.OpenAI(base_url=url + "/v1", api_key="dummy", max_retries=0, timeout=30)
reply = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "hello proxy"}]
)
with open(out, "w") as f:
    json.dump({"service": plain.json()["service"], "reply": reply.choices[0].message.content}, f)
"""


def test_run_real_sdks_honour_the_proxy_and_ca_environment(
    home: Path, upstream: StandIn, tmp_path: Path
) -> None:
    """httpx and the openai SDK with default settings: they only reach the stand-in (whose certificate
    the child does not trust) if they use HTTPS_PROXY and SSL_CERT_FILE from `failcore run`."""
    script, out = tmp_path / "agent.py", tmp_path / "out.json"
    script.write_text(SDK_CHILD)
    result = failcore_run(
        home,
        upstream,
        tmp_path / "tape",
        sys.executable,
        str(script),
        upstream.url,
        str(out),
        options=("--json",),
    )
    assert result.returncode == 0, describe(result)
    assert orjson.loads(out.read_bytes()) == {"service": "failcore-standin", "reply": "Echo: hello proxy"}
    summary = orjson.loads(result.stdout)
    assert summary["requests"] == 2
    paths = {e["path"]: e for e in network_events(read_tape(tmp_path / "tape"))}
    assert set(paths) == {"/json", "/v1/chat/completions"}
    assert all(e["status"] == 200 and e["outcome"] == "ok" for e in paths.values())


BLOCK_FILES_POLICY = """\
version: 1
mode: enforce
default: ALLOW
rules:
  - id: no-files
    path: /v1/files
    action: BLOCK
    reason: agents may not upload files
"""


def test_run_with_an_enforce_policy_blocks_the_child(home: Path, upstream: StandIn, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(BLOCK_FILES_POLICY)
    body = tmp_path / "body.json"
    before = upstream.request_count("/v1/files")
    result = failcore_run(
        home,
        upstream,
        tmp_path / "tape",
        curl_binary(),
        "-sS",
        "--max-time",
        "30",
        "-o",
        str(body),
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "--data",
        '{"purpose": "fine-tune"}',
        f"{upstream.url}/v1/files",
        options=("--policy", str(policy)),
    )
    assert result.returncode == 0, describe(result)
    assert result.stdout == "403"
    error = orjson.loads(body.read_bytes())["error"]
    assert (error["type"], error["rule"]) == ("failcore_blocked", "no-files")
    assert re.search(r"blocked\s+│?\s*1\b", result.stderr), describe(result)
    assert upstream.request_count("/v1/files") == before


# ---------------------------------------------------------------- ca


def test_ca_json_creates_and_describes_the_ca(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh-home"
    result = failcore(fresh, "ca", "--json", "--port", "9123")
    assert result.returncode == 0, describe(result)
    info = orjson.loads(result.stdout)
    cert = Path(info["cert"])
    assert cert.is_file() and cert.parent == fresh
    assert re.fullmatch(r"[0-9a-f]{64}", info["sha256"])
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert info["sha256"] == hashlib.sha256(der).hexdigest()
    assert info["env"]["HTTPS_PROXY"] == "http://127.0.0.1:9123"
    bundle = Path(info["env"]["SSL_CERT_FILE"])
    assert cert.read_bytes().strip() in bundle.read_bytes()
    assert stat.S_IMODE((fresh / "mitmproxy-ca.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700

    again = orjson.loads(failcore(fresh, "ca", "--json").stdout)
    assert again["sha256"] == info["sha256"], "a second call must reuse the CA, not replace it"


# ---------------------------------------------------------------- list / show / tail


def test_list_show_and_tail_json(home: Path, curl_run: RecordedRun, upstream: StandIn) -> None:
    tape = str(curl_run.tape)
    events = read_tape(curl_run.tape)
    run_id = events[0]["run"]

    listed = failcore(home, "list", "--tape", tape, "--json")
    assert listed.returncode == 0, describe(listed)
    (run,) = orjson.loads(listed.stdout)
    assert run["run"] == run_id
    assert run["requests"] == 1
    assert run["hosts"] == {f"127.0.0.1:{upstream.port}": 1}

    # Piped, rich falls back to 80 columns; the id is what `failcore show RUN` needs, so it stays whole.
    table = failcore(home, "list", "--tape", tape)
    assert table.returncode == 0, describe(table)
    assert run_id in table.stdout, describe(table)
    wide = failcore(home, "list", "--tape", tape, columns=300).stdout.splitlines()
    header = next(line for line in wide if "┃" in line and "run" in line)
    row = next(line for line in wide if run_id in line)
    names = [cell.strip() for cell in header.strip("┃ ").split("┃")]
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    assert len(names) == len(cells), f"every column has a heading:\n{header}\n{row}"
    assert dict(zip(names, cells, strict=True))["hosts"] == "127.0.0.1"

    shown = failcore(home, "show", "--last", "--tape", tape, "--json")
    assert shown.returncode == 0, describe(shown)
    shown_events = orjson.loads(shown.stdout)
    assert shown_events == [e for e in events if e["kind"] != "checkpoint"]

    (exchange,) = network_events(events)
    one = failcore(home, "show", run_id, "--event", str(exchange["seq"]), "--tape", tape, "--json")
    assert one.returncode == 0, describe(one)
    assert orjson.loads(one.stdout) == exchange

    missing = failcore(home, "show", run_id, "--event", "9999", "--tape", tape, "--json")
    assert missing.returncode == 2 and "no event 9999" in missing.stderr
    anywhere = failcore(home, "show", "--event", str(exchange["seq"]), "--tape", tape, "--json")
    assert orjson.loads(anywhere.stdout) == exchange, describe(anywhere)
    by_prefix = failcore(home, "show", run_id[:12], "--tape", tape, "--json")
    assert by_prefix.returncode == 0 and orjson.loads(by_prefix.stdout) == shown_events, describe(by_prefix)
    nope = failcore(home, "show", "run-nope", "--tape", tape)
    assert nope.returncode == 2 and "no run 'run-nope'" in nope.stderr and not nope.stdout, describe(nope)
    narrow = failcore(home, "show", run_id, "--tape", tape, columns=80)
    header = next(line for line in narrow.stdout.splitlines() if "seq" in line)
    assert all(name in header.split() for name in ("seq", "decision", "outcome", "status")), narrow.stdout

    tail = failcore(home, "tail", "-n", "5", "--tape", tape, "--json")
    assert tail.returncode == 0, describe(tail)
    tailed = [orjson.loads(line) for line in tail.stdout.splitlines()]
    assert [e["seq"] for e in tailed] == [e["seq"] for e in events][-5:]


# ---------------------------------------------------------------- verify


def flip_one_byte(segment: Path, line_number: int, old: bytes, new: bytes) -> None:
    assert len(old) == len(new) and sum(a != b for a, b in zip(old, new, strict=True)) == 1
    lines = segment.read_bytes().splitlines(keepends=True)
    assert old in lines[line_number - 1]
    lines[line_number - 1] = lines[line_number - 1].replace(old, new, 1)
    segment.write_bytes(b"".join(lines))


def test_verify_detects_a_one_byte_edit(home: Path, upstream: StandIn, tmp_path: Path) -> None:
    tape = tmp_path / "tape"
    run = failcore_run(
        home,
        upstream,
        tape,
        curl_binary(),
        "-sS",
        "--max-time",
        "30",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        f"{upstream.url}/json",
        f"{upstream.url}/status/201",
    )
    assert run.returncode == 0, describe(run)
    intact = failcore(home, "verify", str(tape))
    assert intact.returncode == 0, describe(intact)
    assert "intact" in intact.stdout

    events = read_tape(tape)
    (segment,) = sorted(tape.glob("seg-*.jsonl"))
    line = next(n for n, e in enumerate(events, 1) if e["kind"] == "network" and e["path"] == "/json")
    assert 1 < line < len(events)
    flip_one_byte(segment, line, b'"path":"/json"', b'"path":"/jsoN"')

    broken = failcore(home, "verify", str(tape), columns=300)
    assert broken.returncode == 1, describe(broken)
    assert segment.name in broken.stdout
    assert f"line {line}" in broken.stdout

    report = orjson.loads(failcore(home, "verify", str(tape), "--json").stdout)
    assert report["ok"] is False
    assert report["first_break"]["segment"] == segment.name
    assert report["first_break"]["line"] == line


@dataclass
class ProxyProcess:
    process: subprocess.Popen[str]
    info: dict[str, Any]

    @property
    def url(self) -> str:
        return str(self.info["address"])

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(
            proxy=self.url, verify=str(self.info["ca_cert"]), timeout=timeout, trust_env=False
        )


def start_proxy_process(
    home: Path,
    upstream: StandIn,
    tape: Path,
    *,
    command: tuple[str, ...] = ("-m", "failcore.cli"),
    options: tuple[str, ...] = (),
) -> ProxyProcess:
    """`failcore proxy --port 0 --json`, returning once it has printed where it listens."""
    process = subprocess.Popen(
        [
            sys.executable,
            *command,
            "proxy",
            "--port",
            "0",
            "--json",
            "--tape",
            str(tape),
            "--set",
            f"ssl_verify_upstream_trusted_ca={upstream.ca_path}",
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=child_env(home),
    )
    assert process.stdout is not None
    text = ""
    deadline = time.monotonic() + CLI_TIMEOUT
    # The JSON is indented over several lines; readline returns "" only if the proxy exits.
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            process.wait(STOP_TIMEOUT)
            pytest.fail(f"failcore proxy exited with {process.returncode} before printing its address")
        text += line
        if line.rstrip() == "}":
            return ProxyProcess(process, orjson.loads(text))
    process.kill()
    pytest.fail("failcore proxy did not print its address in time")


class TrafficLoop:
    """Concurrent 200 KB POSTs through a proxy until stopped; counts completed exchanges."""

    def __init__(self, proxy: ProxyProcess, url: str, workers: int = 4) -> None:
        self.proxy = proxy
        self.url = url
        self.stop = threading.Event()
        self.completed = 0
        self._count_lock = threading.Lock()
        self.threads = [threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(workers)]

    def _work(self, worker: int) -> None:
        body = bytes([65 + worker]) * 200 * 1024
        with self.proxy.client() as client:
            while not self.stop.is_set():
                try:
                    client.post(self.url, content=body).raise_for_status()
                except httpx.HTTPError:
                    if self.stop.is_set():
                        return
                    continue
                with self._count_lock:
                    self.completed += 1

    def __enter__(self) -> TrafficLoop:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(STOP_TIMEOUT)

    def wait_for(self, completed: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.completed < completed:
            assert time.monotonic() < deadline, f"only {self.completed} requests completed in {timeout}s"
            time.sleep(0.05)


def verify_report(home: Path, tape: Path, status: str) -> dict[str, Any]:
    """`failcore verify` says exactly `status` (with its exit code), and the chain is unbroken."""
    text = failcore(home, "verify", str(tape), columns=300)
    report = orjson.loads(failcore(home, "verify", str(tape), "--json").stdout)
    assert report["status"] == status, describe(text)
    assert text.returncode == {"ok": 0, "incomplete": 3, "unsigned": 4}[status], describe(text)
    assert report["first_break"] is None
    assert report["ok"] is True
    assert report["key_source"] == "local", "verify must trust this machine's key from FAILCORE_HOME"
    return report


# `failcore proxy` that kills itself with SIGKILL at a known point: in the tape writer, at the write that
# brings the network events on disk to argv[1]; argv[2] "between" writes that batch whole first (the kill
# lands between lines), "mid-line" writes it but for the second half of its last line (a torn write).
KILLED_PROXY = """
import os, runpy, signal, sys
from failcore.tape.writer import TapeWriter

kill_after, where = int(sys.argv.pop(1)), sys.argv.pop(1)
original = TapeWriter._write_bytes
on_disk = 0

def write_then_die(self, data):
    global on_disk
    on_disk += data.count(b'"kind":"network"')
    if on_disk < kill_after:
        return original(self, data)
    if where == "mid-line":
        last_line = data.rindex(b"\\n", 0, len(data) - 1) + 1
        data = data[: last_line + (len(data) - last_line) // 2]
    original(self, data)
    os.kill(os.getpid(), signal.SIGKILL)

TapeWriter._write_bytes = write_then_die
sys.argv[0] = "failcore"
runpy.run_module("failcore.cli", run_name="__main__", alter_sys=True)
"""
KILL_AFTER = 8


def kill_proxy_under_load(home: Path, upstream: StandIn, tape: Path, where: str) -> str:
    """A `failcore proxy` recording concurrent large exchanges dies by SIGKILL at a known point of a
    write (see KILLED_PROXY); returns its run. Checkpoints every 4 events, so it has signed some."""
    proxy = start_proxy_process(
        home,
        upstream,
        tape,
        command=("-c", KILLED_PROXY, str(KILL_AFTER), where),
        options=("--set", "failcore_checkpoint_every=4"),
    )
    try:
        with TrafficLoop(proxy, f"{upstream.url}/echo"):
            proxy.process.wait(STOP_TIMEOUT)
    finally:
        if proxy.process.poll() is None:
            proxy.process.kill()
            proxy.process.wait(STOP_TIMEOUT)
    assert proxy.process.returncode == -signal.SIGKILL
    return str(proxy.info["run"])


def record_one_more_run(home: Path, upstream: StandIn, tape: Path) -> str:
    proxy = start_proxy_process(home, upstream, tape)
    try:
        with proxy.client() as client:
            assert client.get(f"{upstream.url}/json").status_code == 200
        proxy.process.send_signal(signal.SIGINT)
        assert proxy.process.wait(STOP_TIMEOUT) == 0
    finally:
        if proxy.process.poll() is None:
            proxy.process.kill()
            proxy.process.wait(STOP_TIMEOUT)
    return str(proxy.info["run"])


def truncated_segments(report: dict[str, Any]) -> list[str]:
    return [t["segment"] for t in report["truncated"]]


def test_tape_survives_kill_9_between_lines(home: Path, upstream: StandIn, tmp_path: Path) -> None:
    tape = tmp_path / "tape"
    killed_run = kill_proxy_under_load(home, upstream, tape, "between")
    segment = sorted(tape.glob("seg-*.jsonl"))[-1]
    assert segment.read_bytes().endswith(b"\n")
    killed_report = verify_report(home, tape, "incomplete")  # signed checkpoints, but no final one
    assert killed_report["truncated"] == [] and killed_report["checkpoints"] >= 1
    assert len(network_events(read_tape(tape))) >= KILL_AFTER

    next_run = record_one_more_run(home, upstream, tape)
    # The next run's checkpoints sign the killed run's tail and its final one ends the tape.
    report = verify_report(home, tape, "ok")
    assert report["segments"] == killed_report["segments"] + 1
    assert report["lines"] > killed_report["lines"]
    assert report["truncated"] == [] and report["unsigned_tail"] == 0
    runs = {r["run"] for r in orjson.loads(failcore(home, "list", "--tape", str(tape), "--json").stdout)}
    assert runs == {killed_run, next_run}


def test_kill_9_mid_write_tears_the_final_line_and_the_tape_continues(
    home: Path, upstream: StandIn, tmp_path: Path
) -> None:
    tape = tmp_path / "tape"
    kill_proxy_under_load(home, upstream, tape, "mid-line")
    last_segment = sorted(tape.glob("seg-*.jsonl"))[-1]
    data = last_segment.read_bytes()
    assert not data.endswith(b"\n")
    torn_line = data.count(b"\n") + 1

    torn = failcore(home, "verify", str(tape), columns=300)
    assert torn.returncode == 3, describe(torn)  # incomplete: signed checkpoints, no final one
    assert "truncated" in torn.stdout and last_segment.name in torn.stdout
    report = verify_report(home, tape, "incomplete")
    assert [(t["segment"], t["line"]) for t in report["truncated"]] == [(last_segment.name, torn_line)]

    record_one_more_run(home, upstream, tape)
    report = verify_report(home, tape, "incomplete")  # a torn line stays on record
    assert [(t["segment"], t["line"]) for t in report["truncated"]] == [(last_segment.name, torn_line)]


# ---------------------------------------------------------------- policy check


BAD_POLICY = """\
version: 1
mode: enforce
colour: blue
rules:
  - id: r1
    host: example.com
    action: MAYBE
"""


def test_policy_check(home: Path, tmp_path: Path) -> None:
    good = REPO / "policies" / "default.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_POLICY)

    ok = failcore(home, "policy", "check", str(good))
    assert ok.returncode == 0, describe(ok)
    assert f"{good}: OK" in ok.stdout

    result = failcore(home, "policy", "check", str(bad), str(good))
    assert result.returncode == 1, describe(result)
    lines = result.stdout.splitlines()
    unknown = next(line for line in lines if line.startswith(f"{bad}:3:1:"))
    assert "colour" in unknown
    action = next(line for line in lines if line.startswith(f"{bad}:7:13:"))
    assert "MAYBE" in action and "ALLOW, WARN or BLOCK" in action, "one problem per line, not wrapped"
    assert f"{good}: OK" in result.stdout

    data = orjson.loads(failcore(home, "policy", "check", "--json", str(bad), str(good)).stdout)
    assert data["ok"] is False
    assert data["files"][str(good)] == []
    assert [p.split(": ", 1)[0] for p in data["files"][str(bad)]] == [f"{bad}:3:1", f"{bad}:7:13"]

    missing = failcore(home, "policy", "check", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1


# ---------------------------------------------------------------- hostile content


HOSTILE_CHILD = """\
import base64
import os
import socket
import ssl
import sys
from urllib.parse import unquote, urlsplit

target = urlsplit(sys.argv[1])
hostile = sys.argv[2].encode()
proxy = urlsplit(os.environ["HTTPS_PROXY"])
authority = f"{target.hostname}:{target.port}".encode()
# The run's proxy wants the credential its URL carries, as any proxy-aware client sends it.
auth = b""
if proxy.username:
    pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
    auth = b"Proxy-Authorization: Basic " + base64.b64encode(pair) + b"\\r\\n"
sock = socket.create_connection((proxy.hostname, proxy.port), timeout=30)
sock.sendall(b"CONNECT " + authority + b" HTTP/1.1\\r\\nHost: " + authority + b"\\r\\n" + auth + b"\\r\\n")
assert sock.recv(4096).startswith(b"HTTP/1.1 200"), "CONNECT refused"
tls = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"]).wrap_socket(
    sock, server_hostname=target.hostname
)
body = b"body " + hostile
tls.sendall(
    b"POST /echo/" + hostile + b" HTTP/1.1\\r\\nHost: " + authority + b"\\r\\nX-Evil: " + hostile
    + b"\\r\\nContent-Length: " + str(len(body)).encode() + b"\\r\\nConnection: close\\r\\n\\r\\n" + body
)
reply = b""
while chunk := tls.recv(65536):
    reply += chunk
assert reply.startswith(b"HTTP/1.1 "), reply[:200]
"""


def test_hostile_recorded_content_is_shown_inert(home: Path, upstream: StandIn, tmp_path: Path) -> None:
    """Raw ESC/BEL and rich markup in a request line, header and body reach the tape as sent; the
    commands that display a tape must neither pass the control bytes to the terminal nor render markup."""
    script, tape = tmp_path / "hostile.py", tmp_path / "tape"
    script.write_text(HOSTILE_CHILD)
    run = failcore_run(home, upstream, tape, sys.executable, str(script), upstream.url, HOSTILE)
    assert run.returncode == 0, describe(run)
    (exchange,) = network_events(read_tape(tape))
    assert exchange["path"] == f"/echo/{HOSTILE}", "the tape must keep what was sent"

    outputs = {
        "show --last": failcore(home, "show", "--last", "--tape", str(tape), columns=300),
        "show --event": failcore(
            home, "show", exchange["run"], "--event", str(exchange["seq"]), "--tape", str(tape), columns=300
        ),
        "tail": failcore(home, "tail", "-n", "5", "--tape", str(tape), columns=300),
        "list": failcore(home, "list", "--tape", str(tape), columns=300),
    }
    for name, result in outputs.items():
        assert result.returncode == 0, f"{name}: {describe(result)}"
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout, f"{name} leaks control bytes"
    for name in ("show --last", "show --event", "tail"):
        assert "[bold]markup[/bold]" in outputs[name].stdout, f"{name} must show markup literally"
    assert "X-Evil" in outputs["show --event"].stdout


def test_proxy_refuses_an_invalid_policy(home: Path, upstream: StandIn, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_POLICY)
    for command in (("proxy", "--port", "0"), ("run", "--", sys.executable, "-c", "pass")):
        verb, *rest = command
        result = failcore(home, verb, "--policy", str(bad), "--tape", str(tmp_path / "tape"), *rest)
        assert result.returncode == 2, describe(result)
        lines = result.stderr.splitlines()
        assert any(line.startswith(f"{bad}:7:13:") and "MAYBE" in line for line in lines), describe(result)
    assert not list((tmp_path / "tape").glob("seg-*.jsonl"))


def test_proxy_port_in_use_names_failcores_flag(home: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = failcore(home, "proxy", "--port", str(port), "--tape", str(tmp_path / "tape"))
    assert result.returncode == 2, describe(result)
    assert f"port {port} is in use: pass --port N, or --port 0" in result.stderr
    assert "--mode regular@" not in result.stderr and "Traceback" not in result.stderr


def test_proxy_prints_the_run_summary_when_stopped(home: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(FAILCORE_HOME=str(home), COLUMNS="120")
    tape = tmp_path / "tape"
    proc = subprocess.Popen(
        [sys.executable, "-m", "failcore.cli", "proxy", "--port", "0", "--tape", str(tape), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        info = orjson.loads(proc.stdout.readline() + "".join(iter(proc.stdout.readline, "}\n")) + "}")
        subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "--proxy", info["address"], "http://127.0.0.1:9/"],
            timeout=60, check=False,
        )  # fmt: skip
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    # --json keeps stdout to the one JSON document; the human summary goes nowhere then.
    assert "failcore run" not in out
    plain = subprocess.Popen(
        [sys.executable, "-m", "failcore.cli", "proxy", "--port", "0", "--tape", str(tape)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert plain.stdout is not None
    for line in plain.stdout:
        if line.startswith("Ctrl-C stops"):
            break
    plain.send_signal(signal.SIGINT)
    _, err = plain.communicate(timeout=60)
    assert plain.returncode == 0, err
    assert "requests" in err and str(tape) in err and "Traceback" not in err
