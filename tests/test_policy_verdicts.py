"""`decide` keeps the last policy's verdicts by (host, port, scheme, method, path up to its query).
Differential: over generated policies and requests whose paths
carry queries, fragments, escapes, path parameters and case, each asked several times with another
policy judged in between, every answer is the Decision that judging afresh (`_judged`) gives; the
memo is bounded and a new policy (a reload) starts it over."""

from __future__ import annotations

import importlib
import random

import pytest

from failcore.policy.decide import VERDICT_PATH_MAX, VERDICTS_MAX, _judged, decide
from failcore.policy.load import parse_policy, with_mode

decide_module = importlib.import_module("failcore.policy.decide")  # (the package exports the function)

HOSTS = ["api.openai.com", "*.openai.azure.com", "example.test", "127.0.0.1", "localhost", "::1"]
PATHS = ["/v1/chat", "/v1/*", "/admin/**", "/health", "/files/*.json", "/a;b", "/q?x"]
REQUEST_PATHS = [
    "/v1/chat", "/v1/chat?stream=1", "/v1/chat?x=/admin", "/admin?x", "/admin#y?z", "/admin?y#z",
    "/v1/..%2Fadmin?x=1", "/v1/../admin", "/public/..;/admin?a", "/ADMIN/users?q", "/health?", "?",
    "", "#", "/q?x", "/q%3Fx", "/files/a.json?download=1", "/a;b?c", "/%61dmin?x", "/v1/chat/",
]  # fmt: skip


def _policy(rng: random.Random) -> str:
    lines = [f"version: 1\nmode: enforce\ndefault: {rng.choice(['ALLOW', 'BLOCK'])}\nrules:"]
    for n in range(rng.randint(1, 10)):
        lines.append(f"  - id: r{n}\n    action: {rng.choice(['ALLOW', 'WARN', 'BLOCK'])}")
        if rng.random() < 0.8:
            lines.append("    host: [" + ", ".join(f'"{h}"' for h in rng.sample(HOSTS, 2)) + "]")
        if rng.random() < 0.3:
            lines.append(f"    method: [{rng.choice(['GET', 'POST'])}]")
        if rng.random() < 0.6:
            lines.append("    path: [" + ", ".join(f'"{p}"' for p in rng.sample(PATHS, 2)) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("seed", range(25))
def test_kept_verdicts_are_the_verdicts(seed: int) -> None:
    rng = random.Random(seed)
    policy = parse_policy(_policy(rng))
    other = with_mode(policy, "observe")
    requests = [
        {
            "host": rng.choice(
                ["api.openai.com", "x.openai.azure.com", "EXAMPLE.test.", "127.0.0.1", "0.0.0.0"]
            ),
            "port": rng.choice([80, 443]),
            "scheme": rng.choice(["http", "https"]),
            "method": rng.choice(["GET", "POST", "post"]),
            "path": rng.choice(REQUEST_PATHS),
        }
        for _ in range(200)
    ]
    for round_no in range(3):
        for request in requests:
            assert decide(policy, **request) == _judged(policy, **request), request  # type: ignore[arg-type]
        if round_no == 1:
            for request in requests:  # another policy in between: its own verdicts
                assert decide(other, **request) == _judged(other, **request)  # type: ignore[arg-type]


def test_a_query_shares_the_verdict_and_a_reload_starts_over() -> None:
    text = (
        "version: 1\nmode: enforce\ndefault: ALLOW\nrules:\n"
        "  - id: a\n    host: a.test\n    path: /admin\n    action: BLOCK\n"
    )
    policy = parse_policy(text)
    common = {"host": "a.test", "port": 443, "scheme": "https", "method": "GET"}
    first = decide(policy, **common, path="/admin?x=1")  # type: ignore[arg-type]
    assert first.rule == "a"
    assert decide(policy, **common, path="/admin?y=2") is first  # type: ignore[arg-type]
    assert decide(policy, **common, path="/other?x=/admin").rule is None  # type: ignore[arg-type]
    reloaded = parse_policy(text.replace("BLOCK", "WARN"))
    assert decide(reloaded, **common, path="/admin?x=1").decision == "WARN"  # type: ignore[arg-type]


def test_the_kept_verdicts_are_bounded() -> None:
    policy = parse_policy(
        "version: 1\nmode: enforce\ndefault: BLOCK\nrules:\n  - id: a\n    host: a.test\n    action: ALLOW\n"
    )
    for n in range(VERDICTS_MAX + 300):
        decide(policy, host="a.test", port=443, scheme="https", method="GET", path=f"/{n}")
    assert decide_module._verdicts[0] is policy
    assert len(decide_module._verdicts[1]) <= VERDICTS_MAX
    long = "/" + "a" * VERDICT_PATH_MAX
    assert decide(policy, host="a.test", port=443, scheme="https", method="GET", path=long).rule == "a"
    assert ("a.test", 443, "https", "GET", long) not in decide_module._verdicts[1]
