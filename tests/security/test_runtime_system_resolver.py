"""Runtime: a guarded tool resolves names with a DNS client of its own (dnspython) through the system's
configured name server, a loopback stub resolver as systemd-resolved's 127.0.0.53. Allowed by default
(rule net.system_resolver, recorded) although loopback is denied; the attack: the same exception used as
a covert channel to another loopback address on port 53, or to the resolver's address on another port,
is refused before any datagram leaves; `network.system_resolvers: false` turns the exception off."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest

from failcore import Blocked, guard, run
from failcore.runtime import rules as runtime_rules
from tests.runtime.helpers import runtime_events

RESOLVER = "127.0.0.153"  # a loopback stub resolver, as systemd-resolved's 127.0.0.53
OTHER = "127.0.0.154"
# dnspython turns the refusal (an OSError) into its own error naming the server that failed.
REFUSED = (Blocked, dns.exception.DNSException)


class DnsServer:
    """Answers every A question with 192.0.2.7 over UDP; keeps the questions it got."""

    def __init__(self, address: str, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.sock.settimeout(0.2)
        self.questions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self.sock.recvfrom(4096)
            except OSError:
                continue
            query = dns.message.from_wire(wire)
            self.questions.append(query.question[0].name.to_text())
            response = dns.message.make_response(query)
            response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.7"))
            self.sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def serve(address: str, port: int) -> DnsServer:
    try:
        return DnsServer(address, port)
    except PermissionError:
        pytest.skip("binding port 53 needs root (or CAP_NET_BIND_SERVICE)")


@pytest.fixture
def resolver(workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DnsServer]:
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"# written by the test\nsearch example.test\nnameserver {RESOLVER}\noptions edns0\n")
    monkeypatch.setattr(runtime_rules, "RESOLV_CONF", str(conf), raising=False)
    server = serve(RESOLVER, 53)
    yield server
    server.close()


def lookup(nameserver: str, port: int = 53) -> list[str]:
    client = dns.resolver.Resolver(configure=False)
    client.nameservers = [nameserver]
    client.port = port
    client.lifetime = 2
    return [r.address for r in client.resolve("api.example.test", "A")]


def test_a_dns_client_reaches_the_system_resolver(tmp_path: Path, resolver: DnsServer) -> None:
    tape = tmp_path / "tape"
    with run(tape=tape, strict=True):
        assert guard(lookup)(RESOLVER) == ["192.0.2.7"]
    assert resolver.questions == ["api.example.test."]
    connect, tool = runtime_events(tape)
    assert (connect["kind"], connect["decision"], connect["rule"]) == (
        "connect",
        "ALLOW",
        "net.system_resolver",
    )
    assert connect["target"] == {"host": RESOLVER, "port": 53, "scheme": "udp"}
    assert tool["outcome"] == "ok"


def test_another_loopback_address_on_port_53_is_refused(tmp_path: Path, resolver: DnsServer) -> None:
    tape = tmp_path / "tape"
    covert = serve(OTHER, 53)
    try:
        with run(tape=tape, strict=True), pytest.raises(REFUSED):
            guard(lookup)(OTHER)
    finally:
        covert.close()
    assert covert.questions == []
    connect, tool = runtime_events(tape)
    assert (connect["decision"], connect["rule"], connect["target"]["host"]) == (
        "BLOCK",
        "net.loopback",
        OTHER,
    )
    assert (tool["outcome"], tool["rule"]) == ("BLOCKED", "net.loopback")


def test_the_resolver_address_on_another_port_is_refused(tmp_path: Path, resolver: DnsServer) -> None:
    tape = tmp_path / "tape"
    covert = serve(RESOLVER, 0)
    port = covert.sock.getsockname()[1]
    try:
        with run(tape=tape, strict=True), pytest.raises(REFUSED):
            guard(lookup)(RESOLVER, port)
    finally:
        covert.close()
    assert covert.questions == []
    connect, _ = runtime_events(tape)
    assert (connect["decision"], connect["rule"], connect["target"]["port"]) == (
        "BLOCK",
        "net.loopback",
        port,
    )


def test_the_policy_can_turn_the_system_resolvers_off(tmp_path: Path, resolver: DnsServer) -> None:
    tape, policy = tmp_path / "tape", tmp_path / "policy.yaml"
    policy.write_text("version: 1\nnetwork:\n  system_resolvers: false\n")
    with run(tape=tape, policy=policy, strict=True), pytest.raises(REFUSED):
        guard(lookup)(RESOLVER)
    assert resolver.questions == []
    connect, tool = runtime_events(tape)
    assert (connect["decision"], connect["rule"]) == ("BLOCK", "net.loopback")
    assert (tool["outcome"], tool["rule"]) == ("BLOCKED", "net.loopback")
