"""Clients run inside `failcore run --contain` by tests/test_contain.py. None of them is told about a proxy.

    contain_clients.py https ADDRESS PORT CLIENT…   GET https://ADDRESS:PORT/CLIENT with each client
    contain_clients.py escape ADDRESS TCP_PORT UDP_PORT   DNS, UDP and non-HTTP TCP; prints a JSON report

Results go to stdout as `CLIENT STATUS` lines (or the JSON report); failures to stderr, exit 1.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import ssl
import struct
import subprocess
import sys


def curl(url: str) -> str:
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "30", "-o", "/dev/null", "-w", "%{http_code}", url],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or done.stderr.strip()


def aiohttp_get(url: str) -> str:
    import aiohttp

    async def get() -> str:
        # trust_env=False is aiohttp's default: it ignores HTTPS_PROXY; said here so the test says so.
        async with aiohttp.ClientSession(trust_env=False) as session, session.get(url) as response:
            await response.read()
            return str(response.status)

    return asyncio.run(get())


def raw_socket(host: str, port: int, path: str) -> str:
    context = ssl.create_default_context()  # trusts SSL_CERT_FILE, which failcore sets to its bundle
    with (
        socket.create_connection((host, port), timeout=30) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = tls.recv(4096)
            if not chunk:
                break
            head += chunk
    return head.split(b" ", 2)[1].decode()


NODE = """
require('https').get(process.argv[1], (r) => { console.log(r.statusCode); r.resume(); })
  .on('error', (e) => { console.log(e.message); process.exitCode = 1; });
"""


def node(url: str) -> str:
    done = subprocess.run(["node", "-e", NODE, url], capture_output=True, text=True, timeout=60, check=False)
    return done.stdout.strip() or done.stderr.strip()


def https(address: str, port: int, clients: list[str]) -> int:
    ok = True
    for client in clients:
        url = f"https://{address}:{port}/{client}"
        try:
            if client == "curl":
                status = curl(url)
            elif client == "aiohttp":
                status = aiohttp_get(url)
            elif client == "raw":
                status = raw_socket(address, port, f"/{client}")
            elif client == "node":
                status = node(url)
            else:
                raise SystemExit(f"unknown client {client}")
        except Exception as e:
            status = f"{type(e).__name__}: {e}"
        print(client, status, flush=True)
        ok = ok and status == "200"
    return 0 if ok else 1


def dns_query(server: str, name: str) -> str:
    """An A query by hand (no resolver library: the point is where the packet goes)."""
    ident = secrets.randbelow(65536)
    question = (
        b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00" + struct.pack("!HH", 1, 1)
    )
    query = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(query, (server, 53))
        answer, _ = sock.recvfrom(4096)
    count = struct.unpack("!H", answer[6:8])[0]
    if not count:
        return "no answer"
    # The last 4 bytes of a single A answer are the address.
    return socket.inet_ntoa(answer[-4:])


def escape(address: str, tcp_port: int, udp_port: int) -> int:
    report: dict[str, object] = {}
    with open("/etc/resolv.conf") as conf:
        resolver = next(line.split()[1] for line in conf if line.startswith("nameserver"))
    # The configured resolver, and one the client picks itself (DNS to anywhere goes to failcore).
    report["dns"] = [dns_query(resolver, "localhost"), dns_query("198.51.100.53", "localhost")]
    udp = []
    for port in (udp_port, 443):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.connect((address, port))
            try:
                sock.send(b"\xc0quic-like initial packet")
                sock.recv(100)
                udp.append("answered")
            except ConnectionRefusedError:
                udp.append("refused")
            except TimeoutError:
                udp.append("sent, no answer")
    report["udp"] = udp[0]
    with socket.create_connection((address, tcp_port), timeout=10) as sock:
        sock.sendall(b"SSH-2.0-not-http\r\n")
        try:
            report["tcp"] = "closed" if sock.recv(100) == b"" else "answered"
        except ConnectionResetError:
            report["tcp"] = "closed"
    print(json.dumps(report), flush=True)
    return 0


def main(argv: list[str]) -> int:
    mode, address, port, *rest = argv
    if mode == "https":
        return https(address, int(port), rest)
    return escape(address, int(port), int(rest[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
