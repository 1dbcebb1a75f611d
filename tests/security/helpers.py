"""What several attack tests share: the secret they smuggle, the policy that must stop it, a raw
socket reader and a look at the tape's bytes."""

from __future__ import annotations

import socket
from pathlib import Path

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
