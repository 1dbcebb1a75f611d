"""What several attack tests share: the secret they smuggle, the policy that must stop it, a raw
socket reader, a look at the tape's bytes and the real mitmdump with the failcore addon."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ADDON = REPO / "addons" / "failcore_addon.py"
MITMDUMP = Path(sys.executable).parent / "mitmdump"

# Assembled at run time so the repository holds no secret-shaped strings.
AWS_KEY_ID = "AKIA" + "QWERTYUIOPASDFGH"

DLP_BLOCK = """
version: 1
mode: enforce
default: ALLOW
dlp:
  severity_actions: {critical: BLOCK, high: BLOCK}
"""


def tape_bytes(tape: Path) -> bytes:
    """Every segment as written: a secret found here is on disk in clear."""
    return b"".join(p.read_bytes() for p in tape.glob("seg-*.jsonl"))


def read_head(sock: socket.socket) -> bytes:
    """Bytes up to the end of an HTTP head (or the connection's end)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def send_raw(proxy_port: int, request: bytes) -> bytes:
    """One hand-written request to the proxy; the head of its answer."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=30) as s:
        s.sendall(request)
        return read_head(s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_mitmdump(tmp_path: Path, port: int, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "mitmdump.log"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "PYTHONPATH"}
    cmd = [
        str(MITMDUMP),
        "-s",
        str(ADDON),
        "-p",
        str(port),
        "--set",
        f"confdir={tmp_path / 'conf'}",
        "--set",
        f"failcore_tape={tmp_path / 'tape'}",
        *args,
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    deadline = time.monotonic() + 90
    while b"failcore: recording run" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"mitmdump did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return process, log


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)
