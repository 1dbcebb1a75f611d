"""Attack: reach a service a `host: 127.0.0.1` rule blocks by naming loopback otherwise (adversarial
review 2, finding 5).

Linux connects to the unspecified address `0.0.0.0` (`0`, `0x0`) as to 127.0.0.1 and to `::` as to
`::1`, and `localhost` resolves to 127.0.0.1: the reviewer reached a 127.0.0.1 upstream past a BLOCK rule
for 127.0.0.1 with each, because rules matched those hosts as text. A loopback host is now judged in
its other spellings too (0.0.0.0 and `::` as the address the kernel connects to and as `localhost`,
`localhost` as 127.0.0.1 and `::1`, those as `localhost`); the stricter verdict wins through a rule a
spelling matches, so nothing an allow rule did not admit before is admitted now. Review 3: every other
address of 127.0.0.0/8 (`127.0.0.2`, `::ffff:127.0.0.2`) reaches a server on 0.0.0.0 too, and is now
also read as 127.0.0.1 and `localhost`. Each request is written byte for byte so no client normalises
the host first."""

from __future__ import annotations

from pathlib import Path

import pytest

from failcore.policy import decide, parse_policy
from failcore.policy.decide import tcp_verdicts
from tests.helpers import network_events, read_tape
from tests.security.helpers import assert_request_and_connect_refused, request_and_connect, send_raw
from tests.security.upstream import LoggingUpstream

BLOCK_IP = """
version: 1
mode: enforce
default: ALLOW
rules:
  - {id: no-loopback, host: 127.0.0.1, action: BLOCK}
"""

BLOCK_NAME = """
version: 1
mode: enforce
default: ALLOW
rules:
  - {id: no-localhost, host: localhost, action: BLOCK}
"""


@pytest.mark.parametrize(
    ("policy", "spelling", "rule"),
    [
        (BLOCK_IP, "0.0.0.0", "no-loopback"),
        (BLOCK_IP, "0", "no-loopback"),
        (BLOCK_IP, "0x0", "no-loopback"),
        (BLOCK_IP, "localhost", "no-loopback"),
        (BLOCK_IP, "LOCALHOST.", "no-loopback"),
        (BLOCK_NAME, "127.0.0.1", "no-localhost"),
        (BLOCK_NAME, "2130706433", "no-localhost"),
        (BLOCK_NAME, "0.0.0.0", "no-localhost"),
    ],
)
def test_loopback_in_another_spelling_is_blocked(
    start_proxy,
    policy_file,
    plain_logging_upstream: LoggingUpstream,
    tmp_path: Path,
    policy: str,
    spelling: str,
    rule: str,
) -> None:
    proxy = start_proxy(policy_file(policy))
    answer, tunnel = request_and_connect(proxy.port, f"{spelling}:{plain_logging_upstream.port}")
    proxy.flush()
    assert_request_and_connect_refused(answer, tunnel, plain_logging_upstream, tmp_path / "tape", rule)


@pytest.mark.parametrize(
    ("policy", "spelling", "rule"),
    [
        (BLOCK_IP, "127.0.0.2", "no-loopback"),
        (BLOCK_IP, "127.1.2.3", "no-loopback"),
        (BLOCK_IP, "[::ffff:127.0.0.2]", "no-loopback"),
        (BLOCK_IP, "2130706434", "no-loopback"),
        (BLOCK_NAME, "127.0.0.2", "no-localhost"),
    ],
)
def test_another_loopback_address_is_blocked_as_127_0_0_1(
    start_proxy, policy_file, tmp_path: Path, policy: str, spelling: str, rule: str
) -> None:
    """Review 3: a server listening on 0.0.0.0 (the upstream here) answers on every 127/8 address
    on Linux, so a BLOCK of 127.0.0.1 (or `localhost`) must hold for 127.0.0.2, 127.1.2.3 and their
    IPv4-mapped spelling too."""
    with LoggingUpstream(tmp_path / "upstream-any", tls=False, host="0.0.0.0") as upstream:
        proxy = start_proxy(policy_file(policy))
        answer, tunnel = request_and_connect(proxy.port, f"{spelling}:{upstream.port}")
        proxy.flush()
        assert_request_and_connect_refused(answer, tunnel, upstream, tmp_path / "tape", rule)


ALLOW_LOCALHOST = """
version: 1
mode: enforce
default: BLOCK
rules:
  - {id: local-api, host: localhost, port: PORT, action: ALLOW}
"""


def test_an_allow_rule_still_admits_its_own_spelling_only(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """The control: the spelling an allow rule names still passes (its other spellings match no rule,
    so they leave its verdict alone), and 0.0.0.0, refused by the default before, stays refused
    although one of its spellings (`localhost`) is allowed: a spelling only makes a verdict stricter."""
    port = plain_logging_upstream.port
    proxy = start_proxy(policy_file(ALLOW_LOCALHOST.replace("PORT", str(port))))
    allowed = send_raw(
        proxy.port, f"GET http://localhost:{port}/ok HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode()
    )
    refused, tunnel = request_and_connect(proxy.port, f"0.0.0.0:{port}")
    proxy.flush()
    assert allowed.startswith(b"HTTP/1.1 200"), allowed
    assert refused.startswith(b"HTTP/1.1 403"), refused
    assert tunnel.startswith(b"HTTP/1.1 403"), tunnel
    received = plain_logging_upstream.received_bytes()
    assert b"GET /ok HTTP/1.1" in received
    assert b"secret" not in received
    events = network_events(read_tape(tmp_path / "tape"))
    assert sorted((e["action"], e["decision"], e["rule"]) for e in events) == [
        ("http.connect", "BLOCK", None),
        ("http.request", "ALLOW", "local-api"),
        ("http.request", "BLOCK", None),
    ]


ALLOW_TWO = """
version: 1
mode: enforce
default: BLOCK
rules:
  - {id: two, host: 127.0.0.2, port: PORT, action: ALLOW}
"""


def test_an_allow_rule_for_another_loopback_address_admits_that_address_only(
    start_proxy, policy_file, tmp_path: Path
) -> None:
    """The control for review 3: readings only tighten. 127.0.0.2, allowed by its own rule, still
    passes (its readings match no rule); 127.0.0.1, refused by the default, is not read as 127.0.0.2."""
    with LoggingUpstream(tmp_path / "upstream-any", tls=False, host="0.0.0.0") as upstream:
        port = upstream.port
        proxy = start_proxy(policy_file(ALLOW_TWO.replace("PORT", str(port))))
        allowed = send_raw(
            proxy.port, f"GET http://127.0.0.2:{port}/ok HTTP/1.1\r\nHost: 127.0.0.2:{port}\r\n\r\n".encode()
        )
        refused, tunnel = request_and_connect(proxy.port, f"127.0.0.1:{port}")
        proxy.flush()
        received = upstream.received_bytes()
    assert allowed.startswith(b"HTTP/1.1 200"), allowed
    assert refused.startswith(b"HTTP/1.1 403"), refused
    assert tunnel.startswith(b"HTTP/1.1 403"), tunnel
    assert b"GET /ok HTTP/1.1" in received
    assert b"secret" not in received
    events = network_events(read_tape(tmp_path / "tape"))
    assert sorted((e["action"], e["decision"], e["rule"]) for e in events) == [
        ("http.connect", "BLOCK", None),
        ("http.request", "ALLOW", "two"),
        ("http.request", "BLOCK", None),
    ]


@pytest.mark.parametrize(
    ("host", "rules", "expected"),
    [
        # `::` is what the kernel connects to as ::1 (no IPv6 listener here, so judged without a proxy).
        ("[::]", "[{id: v6, host: '::1', action: BLOCK}]", ("BLOCK", "v6")),
        ("::", "[{id: name, host: localhost, action: WARN}]", ("WARN", "name")),
        ("localhost", "[{id: v6, host: '::1', action: BLOCK}]", ("BLOCK", "v6")),
        ("foo.localhost", "[{id: lo, host: 127.0.0.1, action: BLOCK}]", ("BLOCK", "lo")),
        # Every address of 127.0.0.0/8 reaches a server on 0.0.0.0 as 127.0.0.1 does (review 3): it is
        # also 127.0.0.1 and `localhost` for rules, not `::1` (no IPv4 address reaches a `::1` socket).
        ("127.0.0.2", "[{id: lo, host: 127.0.0.1, action: BLOCK}]", ("BLOCK", "lo")),
        ("127.255.255.254", "[{id: name, host: localhost, action: WARN}]", ("WARN", "name")),
        ("[::ffff:127.9.9.9]", "[{id: lo, host: 127.0.0.1, action: BLOCK}]", ("BLOCK", "lo")),
        ("127.0.0.2", "[{id: v6, host: '::1', action: BLOCK}]", ("ALLOW", None)),
        ("[::1]", "[{id: lo, host: 127.0.0.1, action: BLOCK}]", ("ALLOW", None)),
        ("128.0.0.1", "[{id: lo, host: 127.0.0.1, action: BLOCK}]", ("ALLOW", None)),
        ("127.0.0.2.nip.io", "[{id: lo, host: 127.0.0.1, action: BLOCK}]", ("ALLOW", None)),
        # A rule for another loopback address still means that address only when it allows: 127.0.0.1
        # is not read as 127.0.0.2, and a BLOCK of 127.0.0.1 wins over an ALLOW of 127.0.0.2.
        ("127.0.0.1", "[{id: two, host: 127.0.0.2, action: BLOCK}]", ("ALLOW", None)),
        ("127.0.0.2", "[{id: two, host: 127.0.0.2, action: ALLOW}, {id: lo, host: 127.0.0.1, action: BLOCK}]",
         ("BLOCK", "lo")),
        ("0.0.0.0", "[{id: v6, host: '::1', action: BLOCK}]", ("ALLOW", None)),
        # The first matching rule of the spelling as written still decides against a laxer spelling.
        ("0.0.0.0", "[{id: any, host: 0.0.0.0, action: BLOCK}, {id: lo, host: 127.0.0.1, action: ALLOW}]",
         ("BLOCK", "any")),
    ],
)  # fmt: skip
def test_which_spellings_are_the_same_loopback(
    host: str, rules: str, expected: tuple[str, str | None]
) -> None:
    policy = parse_policy(f"version: 1\nmode: enforce\ndefault: ALLOW\nrules: {rules}\n")
    for verdict in (
        decide(policy, host=host, port=80, scheme="http", method="GET", path="/"),
        decide(policy, host=host, port=80, scheme="http", method="GET", path="/"),  # from the index
    ):
        assert (verdict.decision, verdict.rule) == expected


def test_raw_tcp_to_another_loopback_spelling_is_judged_as_loopback() -> None:
    """Raw TCP through a tunnel (judged by host and port only) sees the same spellings."""
    policy = parse_policy(BLOCK_IP)
    for host in ("0.0.0.0", "0", "localhost", "[::ffff:0.0.0.0]"):
        assert [(v.decision, v.rule) for v in tcp_verdicts(policy, host=host, port=5432)] == [
            ("BLOCK", "no-loopback"),
            ("BLOCK", "no-loopback"),
        ], host
    for host in ("127.0.0.2", "2130706434", "[::ffff:127.1.2.3]"):
        assert tcp_verdicts(policy, host=host, port=5432)[0].decision == "BLOCK", host
    assert tcp_verdicts(policy, host="[::1]", port=5432)[0].decision == "ALLOW"


def test_a_budget_scoped_to_a_loopback_host_counts_its_other_spellings() -> None:
    """A budget for a local model server (`host: localhost`) cannot be dodged by calling 127.0.0.1."""
    policy = parse_policy(
        "version: 1\nmode: enforce\nbudgets:\n"
        "  - {id: local, scope: {host: localhost}, window: run, limits: {requests: 1}}\n"
    )
    (budget,) = policy.budgets
    for host in ("localhost", "127.0.0.1", "2130706433", "0.0.0.0", "[::1]", "[::]", "127.0.0.2"):
        assert budget.scope.matches(host=host, provider=None, model=None), host
    for host in ("128.0.0.1", "localhost.example", "api.openai.com"):
        assert not budget.scope.matches(host=host, provider=None, model=None), host
