"""The decision (hot path): ALLOW / WARN / BLOCK for a request, a CONNECT or raw TCP through a tunnel.

Everything that can be computed at load time already is (lower-cased sets, compiled globs, ready-made
Decision objects on the Policy), so `decide` only does set lookups and at most one regex match per rule.
Which rules can match a (host, port, scheme, method) is worked out once per policy and kept (see
`_candidates`): a request then only tests the path of those few rules.
"""

from __future__ import annotations

import re

from failcore.policy.address import normalise_host
from failcore.policy.model import Decision, Policy, Rule, make_decision

# A CONNECT tunnel is treated as carrying https when judging rules that constrain the scheme.
_TUNNEL_SCHEME = "https"
_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


# Entries of a policy's candidate index; past that it starts over (methods and hosts come from clients).
CANDIDATES_MAX = 4096


def decide(policy: Policy, *, host: str, port: int, scheme: str, method: str, path: str) -> Decision:
    candidates = _candidates(policy, host, port, scheme, method)
    if candidates:
        path = _request_path(path)
        for rule, decision in candidates:
            if rule.paths is None or rule.paths.matches(path):
                return decision
    return policy._default_decision


def _candidates(
    policy: Policy, host: str, port: int, scheme: str, method: str
) -> tuple[tuple[Rule, Decision], ...]:
    """The rules, in order, whose host, port, scheme and method match (only their paths are left to
    test), up to the first that has no path and so matches whatever the path. Every input is a pure
    function of the request's (host, port, scheme, method) as given, so the answer is kept per policy.
    """
    key = (host, port, scheme, method)
    index = policy._candidates
    found = index.get(key)
    if found is not None:
        return found
    host, scheme, method = normalise_host(host), scheme.lower(), method.upper()
    matching: list[tuple[Rule, Decision]] = []
    for rule, decision in policy._decision_table:
        if rule.ports is not None and port not in rule.ports:
            continue
        if rule.schemes is not None and scheme not in rule.schemes:
            continue
        if rule.methods is not None and method not in rule.methods:
            continue
        if rule.hosts is not None and not rule.hosts.matches(host):
            continue
        matching.append((rule, decision))
        if rule.paths is None:
            break
    found = tuple(matching)
    if len(index) >= CANDIDATES_MAX:
        index.clear()
    index[key] = found
    return found


def connect_verdict(policy: Policy, *, host: str, port: int) -> Decision:
    """Verdict for a CONNECT, where only host and port are known.

    BLOCK only when every request through the tunnel would be blocked: a rule that could allow some
    request (because it also constrains method or path) lets the tunnel open and leaves the final word
    to `decide` on each request.
    """
    host = normalise_host(host)
    for rule, decision in policy._decision_table:
        if not rule.matches_endpoint(host, port):
            continue
        if rule.schemes is not None and _TUNNEL_SCHEME not in rule.schemes:
            continue
        if not rule.constrains_request_line:
            return decision
        if rule.action != "BLOCK":
            reason = (
                f"rule '{rule.id}' allows some requests to {host}:{port}; "
                "each request is checked when it arrives"
            )
            return make_decision(rule.action, policy.mode, rule.id, reason)
    return policy._default_decision


def tcp_verdict(policy: Policy, *, host: str, port: int) -> Decision:
    """Verdict for raw (non-HTTP) TCP through a tunnel: only host, port and the scheme `tcp` are known.

    A rule that constrains method or path describes HTTP requests and cannot match raw bytes; a rule
    whose schemes leave out `tcp` does not either.
    """
    host = normalise_host(host)
    for rule, decision in policy._decision_table:
        if rule.constrains_request_line or (rule.schemes is not None and "tcp" not in rule.schemes):
            continue
        if rule.matches_endpoint(host, port):
            return decision
    return policy._default_decision


def _request_path(path: str) -> str:
    """The path as the origin server will resolve it: no query or fragment, dot segments removed."""
    end = path.find("?")
    if end != -1:
        path = path[:end]
    end = path.find("#")
    if end != -1:
        path = path[:end]
    if not path:
        return "/"
    # Only paths that could disguise their target (/v1/../admin, //admin, %61dmin) pay for canonicalising.
    if path[0] == "/" and ("%" in path or "//" in path or "/." in path):
        return _canonical_path(path)
    return path


def _canonical_path(path: str) -> str:
    path = _PERCENT_ESCAPE.sub(_decode_unreserved, path)
    segments = path.split("/")
    kept: list[str] = []
    for segment in segments[1:]:
        if segment in ("", "."):
            continue
        if segment == "..":
            if kept:
                kept.pop()
            continue
        kept.append(segment)
    canonical = "/" + "/".join(kept)
    if kept and segments[-1] in ("", ".", ".."):
        canonical += "/"
    return canonical


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0).upper()
