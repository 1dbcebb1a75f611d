"""`decide` keeps, per policy, which rules can match a (host, port, scheme, method) and then tests only
their paths. Differential: over generated policies and requests (host spellings, ports, schemes, methods,
dot segments and escapes in paths, each request asked again with the index warm), it returns exactly the
Decision that walking every rule in order gives, and the index stays bounded."""

from __future__ import annotations

import random

import pytest

from failcore.policy.address import normalise_host
from failcore.policy.decide import CANDIDATES_MAX, decide, request_path
from failcore.policy.load import parse_policy, with_mode
from failcore.policy.model import Decision, Policy

HOSTS = ["api.openai.com", "*.openai.azure.com", "example.test", "127.0.0.1", "localhost", "::1",
         "*.internal.example", "10.0.0.7", "127.0.0.2"]  # fmt: skip
PATHS = ["/v1/chat", "/v1/*", "/admin/**", "/health", "/files/*.json", "/v1/models/[a-c]*"]
METHODS = ["GET", "POST", "DELETE", "PUT"]
SCHEMES = ["http", "https", "ws", "wss"]


def _policy_text(rng: random.Random) -> str:
    lines = [
        f"version: 1\nmode: {rng.choice(['observe', 'enforce'])}\ndefault: {rng.choice(['ALLOW', 'BLOCK'])}"
    ]
    lines.append("rules:")
    for n in range(rng.randint(1, 14)):
        lines.append(f"  - id: r{n}\n    action: {rng.choice(['ALLOW', 'WARN', 'BLOCK'])}")
        if rng.random() < 0.8:
            hosts = rng.sample(HOSTS, rng.randint(1, 3))
            lines.append("    host: [" + ", ".join(f'"{h}"' for h in hosts) + "]")
        if rng.random() < 0.4:
            lines.append(f"    port: [{', '.join(str(p) for p in rng.sample([80, 443, 8080, 11434], 2))}]")
        if rng.random() < 0.4:
            lines.append(f"    scheme: [{', '.join(rng.sample(SCHEMES, rng.randint(1, 3)))}]")
        if rng.random() < 0.4:
            lines.append(f"    method: [{', '.join(rng.sample(METHODS, rng.randint(1, 2)))}]")
        if rng.random() < 0.5:
            lines.append(
                "    path: [" + ", ".join(f'"{p}"' for p in rng.sample(PATHS, rng.randint(1, 2))) + "]"
            )
    return "\n".join(lines) + "\n"


def _request(rng: random.Random) -> dict[str, object]:
    host = rng.choice(
        ["api.openai.com", "API.OpenAI.com.", "eu.openai.azure.com", "openai.azure.com", "example.test",
         "127.0.0.1", "2130706433", "0x7f.1", "[::1]", "LOCALHOST", "a.internal.example",
         "internal.example", "10.0.0.7", "010.0.0.07", "other.test", "127.0.0.2", "[::ffff:127.1.2.3]"]
    )  # fmt: skip
    path = rng.choice(
        ["/v1/chat/completions", "/v1/models", "/admin", "/admin/users", "/health?x=1", "/files/a.json",
         "/files/a/b.json", "/v1/../admin/x", "//admin", "/%61dmin/x", "/v1/models/b2", "/v1/models/z",
         "", "/#frag", "/v1/./chat"]
    )  # fmt: skip
    return {
        "host": host,
        "port": rng.choice([80, 443, 8080, 11434, 9999]),
        "scheme": rng.choice(["http", "https", "HTTPS", "ws", "wss"]),
        "method": rng.choice(["GET", "post", "POST", "DELETE", "PUT", "PATCH"]),
        "path": path,
    }


# The loopback hosts of `_request` in their other spellings (what `localhost` resolves to, and back;
# any other 127/8 address as 127.0.0.1), each judged too: the strictest verdict of a rule matching one wins.
LOOPBACK_SPELLINGS = {
    "127.0.0.1": ["localhost"],
    "::1": ["localhost"],
    "localhost": ["127.0.0.1", "::1"],
    "127.0.0.2": ["127.0.0.1", "localhost"],
    "127.1.2.3": ["127.0.0.1", "localhost"],
}
SEVERITY = {"ALLOW": 0, "WARN": 1, "BLOCK": 2}


def walk_every_rule(policy: Policy, *, host: str, port: int, scheme: str, method: str, path: str) -> Decision:
    """The first rule in the file whose every field matches, as written before the index existed, made
    stricter by the first matching the host in another loopback spelling."""
    host, scheme, method, path = normalise_host(host), scheme.lower(), method.upper(), request_path(path)
    verdict = policy._default_decision
    for spelling in [host, *LOOPBACK_SPELLINGS.get(host, [])]:
        for rule, decision in policy._decision_table:
            if rule.matches_request(spelling, port, scheme, method, path):
                if spelling == host or SEVERITY[decision.matched_action] > SEVERITY[verdict.matched_action]:
                    verdict = decision
                break
    return verdict


@pytest.mark.parametrize("seed", range(40))
def test_decide_matches_walking_every_rule(seed: int) -> None:
    rng = random.Random(seed)
    policy = parse_policy(_policy_text(rng))
    requests = [_request(rng) for _ in range(150)]
    for request in requests * 2:  # the second pass answers from the index
        assert decide(policy, **request) == walk_every_rule(policy, **request), request  # type: ignore[arg-type]
    observed = with_mode(policy, "observe" if policy.mode == "enforce" else "enforce")
    for request in requests:  # a policy with another mode has its own index and its own decisions
        assert decide(observed, **request) == walk_every_rule(observed, **request)  # type: ignore[arg-type]


def test_a_rule_later_in_the_file_still_wins_when_the_earlier_ones_fail_on_the_path() -> None:
    policy = parse_policy(
        "version: 1\nmode: enforce\ndefault: ALLOW\nrules:\n"
        "  - id: admin\n    host: example.test\n    path: /admin\n    action: BLOCK\n"
        "  - id: rest\n    host: example.test\n    action: WARN\n"
    )
    common = {"host": "example.test", "port": 80, "scheme": "http", "method": "GET"}
    assert decide(policy, **common, path="/admin/x").rule == "admin"  # type: ignore[arg-type]
    assert decide(policy, **common, path="/v1").rule == "rest"  # type: ignore[arg-type]
    assert decide(policy, **common, path="/v1/../admin/x").rule == "admin"  # type: ignore[arg-type]
    assert decide(policy, **common, path="/%61dmin").rule == "admin"  # type: ignore[arg-type]


def test_the_index_is_bounded() -> None:
    policy = parse_policy(
        "version: 1\nmode: enforce\ndefault: BLOCK\nrules:\n  - id: a\n    host: a.test\n    action: ALLOW\n"
    )
    for n in range(CANDIDATES_MAX + 500):
        assert (
            decide(policy, host=f"h{n}.test", port=443, scheme="https", method=f"M{n}", path="/").rule is None
        )
    assert len(policy._candidates) <= CANDIDATES_MAX
    assert decide(policy, host="A.TEST.", port=443, scheme="https", method="GET", path="/").rule == "a"
