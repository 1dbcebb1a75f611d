"""`failcore run --contain`: run a command in a network namespace whose only way out is failcore.

    netns failcore-PID-TAG                      host (root namespace)
    CMD --> fcTAGn 10.233.X.Y+2 ==veth==> fcTAGh 10.233.X.Y+1
                                           nat PREROUTING -i fcTAGh:
                                             tcp/53, udp/53 -> failcore's DNS listener
                                             any other tcp  -> failcore's transparent listener
                                           filter INPUT -i fcTAGh: only those two listeners
                                           filter FORWARD -i fcTAGh: REJECT (nothing is routed on)

Every TCP connection the command opens ends at failcore (mitmproxy's transparent mode recovers the
original destination with SO_ORIGINAL_DST); every DNS query is answered by failcore's DNS listener.
Anything else (UDP such as QUIC, ICMP, IPv6) is refused by the host's rules and recorded: a packet
socket on the host side of the veth sees what the namespace sends, and the first packet to each
destination becomes a BLOCK event on the tape. The rules live on the host side, out of the command's
reach; the command itself runs without capabilities, so it cannot leave the namespace (setns) or change
its routes. Teardown (namespace, veth, rules) runs on every exit path, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failcore.event import EgressEvent, Target

# Debian package of each tool the containment runs.
TOOLS: dict[str, str] = {"ip": "iproute2", "iptables": "iptables", "setpriv": "util-linux"}
NAME_PREFIX = "failcore-"
SUBNET_PREFIX = "10.233"
COMMAND_TIMEOUT = 15.0
NETNS_ETC = Path("/etc/netns")
RULE = "contain"
REASON = "a contained command reaches the network only through failcore (TCP) and its DNS"
# Distinct refused destinations recorded one event each; past this, only counted (the tape stays bounded).
MAX_REFUSED_EVENTS = 1000
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
ALTERNATIVES = (
    "without --contain, `failcore run -- CMD` gives CMD proxy variables (HTTPS_PROXY/https_proxy) and "
    "records every client that honours them; `failcore proxy --mode transparent` with an iptables "
    "owner rule captures one user's traffic"
)


class ContainError(Exception):
    """The containment could not be set up (or torn down): the message says what and what to try."""


def missing_prerequisites(which: Callable[[str], str | None] = shutil.which) -> str | None:
    """Why `--contain` cannot work here (one message naming what is missing), or None."""
    if not sys.platform.startswith("linux"):
        return f"--contain needs Linux network namespaces (this is {sys.platform}); {ALTERNATIVES}"
    problems = []
    if os.geteuid() != 0:
        problems.append("root (to create a network namespace and iptables rules: run it with sudo)")
    missing = [tool for tool in TOOLS if which(tool) is None]
    if missing:
        packages = " ".join(dict.fromkeys(TOOLS[t] for t in missing))
        problems.append(f"{', '.join(missing)} (Debian/Ubuntu: apt-get install {packages})")
    if not problems:
        return None
    return f"--contain needs {'; '.join(problems)}. Instead, {ALTERNATIVES}."


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(list(cmd), 1, "", str(e))


def _must(*cmd: str) -> str:
    done = _run(cmd)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise ContainError(f"`{' '.join(cmd)}` failed: {detail[-1] if detail else f'exit {done.returncode}'}")
    return done.stdout


def _free_subnet() -> tuple[str, str]:
    """Two addresses of a 10.233.X.Y/30 that no interface or route on this host touches."""
    in_use = _must("ip", "-4", "-o", "addr", "show") + _must("ip", "-4", "route", "show")
    for _ in range(64):
        third, fourth = secrets.randbelow(256), 4 * secrets.randbelow(64)
        net = ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{third}.{fourth}/30")
        hosts = list(net.hosts())
        if not any(f"{addr}/" in in_use or f"{addr} " in in_use for addr in (net.network_address, *hosts)):
            return str(hosts[0]), str(hosts[1])
    raise ContainError(f"no free {SUBNET_PREFIX}.X.Y/30 subnet found for the namespace's veth")


def free_port(host: str, *, udp_too: bool = False) -> int:
    """A port free on `host` for TCP (and UDP: mitmproxy's DNS mode listens on both)."""
    for _ in range(32):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            if not udp_too:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise ContainError(f"no free port on {host}")


@dataclass(slots=True)
class Containment:
    name: str
    tag: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str
    chain: str
    # (table, rule spec) of the jumps into this run's chains, in the order they were added.
    jumps: list[tuple[str, list[str]]] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)
    tcp_port: int | None = None
    dns_port: int | None = None

    @classmethod
    def create(cls) -> Containment:
        """Namespace, veth and addresses (no rules yet: they need failcore's listening ports)."""
        remove_stale()
        tag = secrets.token_hex(3)
        host_ip, ns_ip = _free_subnet()
        c = cls(
            name=f"{NAME_PREFIX}{os.getpid()}-{tag}",
            tag=tag,
            host_if=f"fc{tag}h",
            ns_if=f"fc{tag}n",
            host_ip=host_ip,
            ns_ip=ns_ip,
            chain=f"failcore-{tag}",
        )
        try:
            c._create()
        except BaseException:
            c.close()
            raise
        return c

    def _create(self) -> None:
        _must("ip", "netns", "add", self.name)
        # `ip netns exec` bind-mounts /etc/netns/NAME/* over /etc: the namespace's resolver is failcore.
        etc = NETNS_ETC / self.name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"# failcore --contain\nnameserver {self.host_ip}\n")
        _must("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        # No IPv6 on either end: the host's rules are IPv4 (iptables), so IPv6 must not exist.
        _disable_ipv6(self.host_if)
        _must("ip", "link", "set", self.ns_if, "netns", self.name)
        _must(
            "ip",
            "netns",
            "exec",
            self.name,
            "sh",
            "-c",
            "for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do echo 1 > $f; done 2>/dev/null; true",
        )
        _must("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _must("ip", "link", "set", self.host_if, "up")
        ns = ("ip", "-n", self.name)
        _must(*ns, "link", "set", "lo", "up")
        _must(*ns, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        _must(*ns, "link", "set", self.ns_if, "up")
        _must(*ns, "route", "add", "default", "via", self.host_ip)

    def route(self, tcp_port: int, dns_port: int) -> None:
        """Host-side rules: TCP to failcore's transparent listener, DNS to its DNS listener, the rest
        refused. The jumps go first in their chains so no earlier host rule can accept the traffic."""
        self.tcp_port, self.dns_port = tcp_port, dns_port
        c = self.chain
        for table in ("nat", "filter"):
            _iptables(table, "-N", c)
            self.chains.append(table)
        for proto in ("udp", "tcp"):
            _iptables(
                "nat", "-A", c, "-p", proto, "--dport", "53", "-j", "REDIRECT", "--to-ports", str(dns_port)
            )
        _iptables("nat", "-A", c, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(tcp_port))
        for proto, port in (("tcp", tcp_port), ("tcp", dns_port), ("udp", dns_port)):
            _iptables(
                "filter", "-A", c, "-d", self.host_ip, "-p", proto, "--dport", str(port), "-j", "ACCEPT"
            )
        _iptables("filter", "-A", c, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset")
        _iptables("filter", "-A", c, "-j", "REJECT", "--reject-with", "icmp-port-unreachable")
        for table, jump in (
            ("nat", ["PREROUTING", "-i", self.host_if, "-j", c]),
            ("filter", ["INPUT", "-i", self.host_if, "-j", c]),
            ("filter", ["FORWARD", "-i", self.host_if, "-j", "REJECT"]),
        ):
            _iptables(table, "-I", jump[0], "1", *jump[1:])
            self.jumps.append((table, jump))

    def command(self, argv: Sequence[str]) -> list[str]:
        """argv run inside the namespace with no capabilities: it cannot setns() back out, change the
        namespace's routes, or raise its privileges through a setuid binary."""
        return [
            "ip", "netns", "exec", self.name,
            "setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
            *argv,
        ]  # fmt: skip

    def close(self) -> list[str]:
        """Remove everything this run created (best effort, each step independent); returns what is
        still there afterwards, so the caller can say so."""
        for table, jump in reversed(self.jumps):
            _run(["iptables", "-w", "-t", table, "-D", *jump])
        for table in self.chains:
            _run(["iptables", "-w", "-t", table, "-F", self.chain])
            _run(["iptables", "-w", "-t", table, "-X", self.chain])
        _kill_namespace_processes(self.name)
        _run(["ip", "netns", "delete", self.name])
        if _link_exists(self.host_if):
            _run(["ip", "link", "delete", self.host_if])
        shutil.rmtree(NETNS_ETC / self.name, ignore_errors=True)
        return self.leftovers()

    def leftovers(self) -> list[str]:
        left = []
        if self.name in namespaces():
            left.append(f"network namespace {self.name} (ip netns delete {self.name})")
        if _link_exists(self.host_if):
            left.append(f"interface {self.host_if} (ip link delete {self.host_if})")
        for table in ("nat", "filter"):
            if _run(["iptables", "-w", "-t", table, "-n", "-L", self.chain]).returncode == 0:
                left.append(f"iptables chain {self.chain} in table {table}")
        for table, jump in self.jumps:
            if _run(["iptables", "-w", "-t", table, "-C", *jump]).returncode == 0:
                left.append(f"iptables rule -t {table} {' '.join(jump)}")
        if (NETNS_ETC / self.name).exists():
            left.append(str(NETNS_ETC / self.name))
        return left


def _iptables(table: str, *args: str) -> None:
    _must("iptables", "-w", "-t", table, *args)


def _disable_ipv6(interface: str) -> None:
    path = Path("/proc/sys/net/ipv6/conf") / interface / "disable_ipv6"
    with contextlib.suppress(OSError):  # a kernel without IPv6 has nothing to disable
        path.write_text("1\n")


def _link_exists(interface: str) -> bool:
    return _run(["ip", "link", "show", interface]).returncode == 0


def namespaces() -> list[str]:
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).stdout.splitlines() if line.strip()]


def _kill_namespace_processes(name: str) -> None:
    """What CMD left running in the namespace (a daemonised child) would keep it alive after delete."""
    for _ in range(3):
        pids = [int(p) for p in _run(["ip", "netns", "pids", name]).stdout.split() if p.isdigit()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


_STALE = re.compile(rf"^{NAME_PREFIX}(\d+)-([0-9a-f]{{6}})$")


def remove_stale() -> list[str]:
    """Namespaces (and their rules) of contained runs whose failcore was killed (SIGKILL, power loss)."""
    removed = []
    for name in namespaces():
        m = _STALE.match(name)
        if not m or _alive(int(m.group(1))):
            continue
        tag = m.group(2)
        stale = Containment(name, tag, f"fc{tag}h", f"fc{tag}n", "", "", f"failcore-{tag}")
        stale.chains = ["nat", "filter"]
        stale.jumps = [
            ("nat", ["PREROUTING", "-i", stale.host_if, "-j", stale.chain]),
            ("filter", ["INPUT", "-i", stale.host_if, "-j", stale.chain]),
            ("filter", ["FORWARD", "-i", stale.host_if, "-j", "REJECT"]),
        ]
        stale.close()
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- what the host's rules refused


@dataclass(frozen=True, slots=True)
class Refused:
    protocol: str
    host: str
    port: int


def refused_packet(
    ethertype: int, packet: bytes, dns_port: int | None = None, host_ip: str = ""
) -> Refused | None:
    """What a packet from the namespace tried to reach, if the host's rules refuse it (None when the
    packet goes to failcore: IPv4 TCP, DNS, or failcore's own listeners)."""
    if ethertype == ETH_P_IP and len(packet) >= 20 and packet[0] >> 4 == 4:
        header = (packet[0] & 0x0F) * 4
        proto = packet[9]
        dst = str(ipaddress.IPv4Address(packet[16:20]))
        fragment = int.from_bytes(packet[6:8]) & 0x1FFF
    elif ethertype == ETH_P_IPV6 and len(packet) >= 40 and packet[0] >> 4 == 6:
        header = 40
        proto = packet[6]
        dst = str(ipaddress.IPv6Address(packet[24:40]))
        fragment = 0
    else:
        return None
    port = 0
    if proto in (6, 17, 132) and not fragment and len(packet) >= header + 4:
        port = int.from_bytes(packet[header + 2 : header + 4])
    if ethertype == ETH_P_IP:
        if proto == 6:
            return None
        if proto == 17 and (port == 53 or (dst == host_ip and port == dns_port)):
            return None
        if fragment:  # a later fragment of a datagram already seen (or not: it is refused anyway)
            return None
    return Refused(PROTOCOLS.get(proto, f"ip-proto-{proto}"), dst, port)


def refused_event(run_id: str, refused: Refused, ts: float, count_note: str = "") -> dict[str, Any]:
    scheme = refused.protocol if refused.protocol in ("tcp", "udp") else "ip"
    where = f"{refused.host}:{refused.port}" if refused.port else refused.host
    return EgressEvent(
        kind="network",
        run=run_id,
        ts_start=ts,
        ts_end=ts,
        flow=str(uuid.uuid4()),
        action="ip.packet",
        target=Target(refused.host, refused.port, scheme),
        path="",
        summary=f"{refused.protocol.upper()} {where} refused{count_note}",
        decision="BLOCK",
        rule=RULE,
        reason=REASON,
        outcome="BLOCKED",
        detail={"protocol": refused.protocol},
    ).to_dict()


class RefusedPacketLog:
    """Reads what the namespace sends from a packet socket on the host side of the veth (the kernel
    drops the refused packets; this only watches) and records each refused destination once."""

    def __init__(
        self, containment: Containment, record: Callable[[dict[str, Any]], None], run_id: str
    ) -> None:
        self.containment = containment
        self.record = record
        self.run_id = run_id
        self.seen: set[Refused] = set()
        self.unrecorded = 0
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self.sock.bind((containment.host_if, ETH_P_ALL))
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> None:
        """Everything queued now (call when readable, and once more before the tape closes)."""
        c = self.containment
        while True:
            try:
                packet, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the interface went away
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            refused = refused_packet(addr[1], packet, c.dns_port, c.host_ip)
            if refused is None or refused in self.seen:
                continue
            if len(self.seen) >= MAX_REFUSED_EVENTS:
                self.unrecorded += 1
                continue
            self.seen.add(refused)
            self.record(refused_event(self.run_id, refused, time.time()))

    def close(self) -> None:
        self.read()
        if self.unrecorded:
            self.record(
                refused_event(
                    self.run_id,
                    Refused("ip", "*", 0),
                    time.time(),
                    f": {self.unrecorded} more destinations, not recorded one by one",
                )
            )
        self.sock.close()
