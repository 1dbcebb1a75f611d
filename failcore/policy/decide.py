"""The decision (hot path): ALLOW / WARN / BLOCK for a request, a CONNECT or raw TCP through a tunnel.

Everything that can be computed at load time already is (lower-cased sets, compiled globs, ready-made
Decision objects on the Policy), so `decide` only does set lookups and at most one regex match per rule.
Which rules can match a (host, port, scheme, method) is worked out once per policy and kept (see
`_candidates`): a request then only tests the path of those few rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl

from failcore.policy.address import loopback_readings, normalise_host
from failcore.policy.model import Decision, Policy, Rule, make_decision

# A CONNECT tunnel is treated as carrying https when judging rules that constrain the scheme.
_TUNNEL_SCHEME = "https"
_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# A segment's path parameters (`/a;jsessionid=1/b`), which Tomcat, Jetty and Spring drop before routing.
_PATH_PARAMETERS = re.compile(r";[^/]*")
_SEVERITY = {"ALLOW": 0, "WARN": 1, "BLOCK": 2}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


# Headers with which a client asks the server to run another method than the request line's (Flask's
# documented middleware, Express's method-override, Google APIs, ASP.NET, Symfony, …), and the query
# parameter Express / Laravel / Symfony read for the same.
METHOD_OVERRIDE_HEADERS = frozenset({b"x-http-method-override", b"x-http-method", b"x-method-override"})
METHOD_OVERRIDE_PARAMETER = "_method"


# Entries of a policy's candidate index; past that it starts over (methods and hosts come from clients).
CANDIDATES_MAX = 4096


# The verdicts of the last policy `decide` judged with (its identity, and theirs by the request's host,
# port, scheme, method and path up to its query); past VERDICTS_MAX it starts over.
_verdicts: tuple[Policy | None, dict[tuple[str, int, str, str, str], Decision]] = (None, {})
VERDICTS_MAX = 4096
# A longer path (up to its query) is judged every time.
VERDICT_PATH_MAX = 1024


def decide(policy: Policy, *, host: str, port: int, scheme: str, method: str, path: str) -> Decision:
    """The verdict for a request. A pure function of the policy and these, which reads the path only
    through `request_path` (so not past a `?`): kept for the last policy, so the requests that repeat an
    endpoint (an agent's every call to its provider's) are looked up."""
    global _verdicts
    kept_for, verdicts = _verdicts
    if kept_for is not policy:
        verdicts = {}
        _verdicts = (policy, verdicts)
    query = path.find("?")
    endpoint = path if query < 0 else path[:query]
    if len(endpoint) > VERDICT_PATH_MAX:
        return _judged(policy, host, port, scheme, method, path)  # (not kept: 4,096 of them could be MiBs)
    key = (host, port, scheme, method, endpoint)
    found = verdicts.get(key)
    if found is None:
        found = _judged(policy, host, port, scheme, method, path)
        if len(verdicts) >= VERDICTS_MAX:
            verdicts.clear()
        verdicts[key] = found
    return found


def _judged(policy: Policy, host: str, port: int, scheme: str, method: str, path: str) -> Decision:
    decision = _decide(policy, host, port, scheme, method, path, policy._default_decision)
    # A loopback host in another spelling (`0.0.0.0`, `localhost`) is judged as each too: the stricter
    # verdict wins through a rule that spelling matches (else the verdict stands).
    for alias in loopback_readings(host):
        decision = stricter(decision, _decide(policy, alias, port, scheme, method, path, decision))
    return decision


def _decide(
    policy: Policy, host: str, port: int, scheme: str, method: str, path: str, default: Decision
) -> Decision:
    """The verdict for the host as given; `default` when no rule matches it."""
    candidates = _candidates(policy, host, port, scheme, method)
    if not candidates:
        return default
    path = request_path(path)
    decision = _first_match(candidates, path, default)
    aliases: list[tuple[str, bool]] = []
    if "%2F" in path or "%5C" in path or "\\" in path or ";" in path or "%3B" in path or "%3b" in path:
        # Servers read some paths otherwise than as written: werkzeug, uvicorn and Node's routers
        # decode %2F before routing, some read '\\' as '/'; Tomcat, Jetty and Spring drop each
        # segment's `;…` path parameters before resolving dot segments (`/public/..;/admin`; a `%3B` too,
        # which a proxy decoding the path before Tomcat turns into `;`). Each such
        # reading (dot segments removed again) is judged too and the stricter verdict wins. A reading
        # counts through a rule it matches; through the default only when its dot segments climb out
        # of the path as written (`/api/..%2Fadmin`, `/public/..;/admin`): an allow-list rule
        # `/projects/*/issues` still admits GitLab's `/projects/group%2Fname/issues`, whose reading
        # merely has one segment more, and one written for `/app;jsessionid=*` still admits it.
        aliases = path_aliases(path)
        for alias, climbs in aliases:
            fallback = default if climbs else decision
            decision = stricter(decision, _first_match(candidates, alias, fallback))
    if _folding_matters(candidates, path):
        # Express, ASP.NET Core, Fiber and IIS route paths regardless of case (`/ADMIN/users` runs what
        # `/admin/users` runs): the path and each reading above are judged case-folded too, counting
        # through a rule they match (or, for a reading that climbs, the default) as above.
        for reading, climbs in [(path, False), *aliases]:
            fallback = default if climbs else decision
            decision = stricter(decision, _first_match_folded(candidates, reading, fallback))
    return decision


def path_aliases(path: str) -> list[tuple[str, bool]]:
    """The other readings of a `request_path` that servers route by, each canonical and whether dot
    segments appear in it that the path as written does not resolve (it climbs): with `%2F`, `%5C`
    and `\\` read as `/`, with every segment's `;…` (or `%3B…`) parameters dropped, and both in either
    order (Spring drops parameters before decoding, a decoding proxy in front of Tomcat after). The
    path is as `request_path` returns it (escapes upper case)."""
    readings: list[str] = []
    separators = "%2F" in path or "%5C" in path or "\\" in path
    if separators:
        readings.append(_decode_separators(path))
    if ";" in path or "%3B" in path or "%3b" in path:
        readings.append(_drop_parameters(path))
        if separators:
            readings.append(_decode_separators(readings[-1]))
            readings.append(_drop_parameters(readings[0]))
    aliases: dict[str, bool] = {}
    for reading in readings:
        alias = _canonical_path(reading)
        if alias != path:
            climbs = any(segment in (".", "..") for segment in reading.split("/"))
            aliases[alias] = aliases.get(alias, False) or climbs
    return list(aliases.items())


def override_methods(fields: Iterable[tuple[bytes, bytes]], path: str) -> list[str]:
    """The methods a request asks the server to run instead of its own (upper case, as many as it
    names): the values of its method-override headers (`fields`: raw name/value pairs, as mitmproxy's
    `Headers.fields`) and of a `_method` query parameter. A `_method` form field is read by
    `failcore.proxy.overrides.body_override_methods` once the body is there."""
    values = [value.decode("latin-1") for name, value in fields if name.lower() in METHOD_OVERRIDE_HEADERS]
    query = path.find("?")
    if query != -1 and "method" in path[query:].lower():
        end = path.find("#", query)
        pairs = parse_qsl(path[query + 1 : end if end != -1 else None], keep_blank_values=True)
        values.extend(value for key, value in pairs if key.lower() == METHOD_OVERRIDE_PARAMETER)
    if not values:
        return values
    return [m for value in values for m in (part.strip().upper() for part in value.split(",")) if m]


def _first_match(candidates: tuple[tuple[Rule, Decision], ...], path: str, default: Decision) -> Decision:
    for rule, decision in candidates:
        if rule.paths is None or rule.paths.matches(path):
            return decision
    return default


def _folding_matters(candidates: tuple[tuple[Rule, Decision], ...], path: str) -> bool:
    """Whether a case-folded reading of `path` could match otherwise than the path as written."""
    lower = path == path.lower()
    return any(rule.paths is not None and (not lower or rule.paths.cased) for rule, _ in candidates)


def _first_match_folded(
    candidates: tuple[tuple[Rule, Decision], ...], path: str, default: Decision
) -> Decision:
    lowered = path.lower()
    for rule, decision in candidates:
        if rule.paths is None or rule.paths.matches_folded(path, lowered):
            return decision
    return default


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
    verdict = _connect_verdict(policy, host, port, policy._default_decision)
    for alias in loopback_readings(host):
        verdict = stricter(verdict, _connect_verdict(policy, alias, port, verdict))
    return verdict


def _connect_verdict(policy: Policy, host: str, port: int, default: Decision) -> Decision:
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
    return default


def tcp_verdict(policy: Policy, *, host: str, port: int) -> Decision:
    """Verdict for raw (non-HTTP) TCP through a tunnel whose bytes may be HTTP (the strict one of
    `tcp_verdicts`)."""
    return tcp_verdicts(policy, host=host, port=port)[1]


def tcp_verdicts(policy: Policy, *, host: str, port: int) -> tuple[Decision, Decision]:
    """Verdicts for raw (non-HTTP) TCP through a tunnel: only host, port and the scheme `tcp` are known.

    The first is for bytes that are not HTTP: a rule naming `scheme: tcp`, or one naming only host and
    port, decides, else the default. The second is for bytes that may be HTTP mitmproxy did not
    recognise (a request after a leading CRLF, TLS without ALPN, `tcp_hosts`), which the origin server
    runs all the same: a BLOCK or WARN rule for HTTP (naming a method, a path, or schemes without
    `tcp`) that could match the endpoint, or a budget that could count calls to it, cannot be checked
    on bytes failcore does not parse, so it applies to the whole stream (refused in enforce mode, WARN
    with would_block in observe mode). A `scheme: tcp` rule is the policy's own word and decides both.
    The caller picks one by what the client's first bytes look like (`looks_like_http`).
    """
    host = normalise_host(host)
    default = policy._default_decision
    verdicts = _tcp_verdicts(policy, host, port, (default, default))
    for alias in loopback_readings(host):
        found = _tcp_verdicts(policy, alias, port, verdicts)
        verdicts = stricter(verdicts[0], found[0]), stricter(verdicts[1], found[1])
    return verdicts


def _tcp_verdicts(
    policy: Policy, host: str, port: int, default: tuple[Decision, Decision]
) -> tuple[Decision, Decision]:
    unjudged: Rule | None = None
    for rule, decision in policy._decision_table:
        if not rule.matches_endpoint(host, port):
            continue
        if not rule.constrains_request_line:
            if rule.schemes is None:
                return decision, _unjudged_stream(policy, decision, unjudged, host, port)
            if "tcp" in rule.schemes:
                return decision, decision
        if rule.action != "ALLOW" and (
            unjudged is None or _SEVERITY[rule.action] > _SEVERITY[unjudged.action]
        ):
            unjudged = rule
    return default[0], _unjudged_stream(policy, default[1], unjudged, host, port)


# What a client may send before an HTTP/1 request line and a server still read the request (RFC 9112
# section 2.2 asks servers to skip empty lines; some skip spaces or NULs too).
HTTP_LEADING = b" \t\r\n\x00"
# RFC 9110 tchar: the bytes of a method token.
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def looks_like_http(data: bytes) -> bool | None:
    """Whether a client's first bytes (after any `HTTP_LEADING` bytes) may start an HTTP request: a
    method token of any case or name followed by a space (the HTTP/2 preface `PRI * HTTP/2.0` too).
    None while `data` is too short to tell (only leading bytes, or a token not yet ended)."""
    start = len(data) - len(data.lstrip(HTTP_LEADING))
    rest = data[start:]
    if not rest:
        return None
    for i, byte in enumerate(rest):
        if byte == 0x20:
            return i > 0
        if byte not in _TCHAR:
            return False
    return None


def _unjudged_stream(policy: Policy, decision: Decision, rule: Rule | None, host: str, port: int) -> Decision:
    """`decision`, made stricter by an HTTP rule (or a budget) that HTTP sent as raw bytes to host:port
    could get past."""
    if rule is not None:
        named = (("method", rule.methods), ("path", rule.paths), ("scheme", rule.schemes))
        what = ", ".join(name for name, value in named if value is not None)
        reason = (
            f"TCP to {host}:{port} that starts like HTTP but that failcore could not read as HTTP; "
            f"rule '{rule.id}' (names {what}) cannot be checked on it, so it applies to the whole stream"
        )
        decision = stricter(decision, make_decision(rule.action, policy.mode, rule.id, reason))
    if decision.matched_action != "BLOCK":
        for budget in policy.budgets:
            if budget.scope.hosts is None or budget.scope.hosts.matches(host):
                reason = (
                    f"TCP to {host}:{port} that starts like HTTP but that failcore could not read as "
                    f"HTTP; budget '{budget.id}' could count calls to it and cannot meter it, so the "
                    "stream is refused"
                )
                return make_decision("BLOCK", policy.mode, f"budget:{budget.id}", reason)
    return decision


def stricter(a: Decision, b: Decision) -> Decision:
    """The verdict whose matched action is stricter (BLOCK > WARN > ALLOW); `a` on a tie."""
    return b if _SEVERITY[b.matched_action] > _SEVERITY[a.matched_action] else a


def request_path(path: str) -> str:
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


def _drop_parameters(path: str) -> str:
    return _PATH_PARAMETERS.sub("", path.replace("%3B", ";").replace("%3b", ";"))


def _decode_separators(path: str) -> str:
    return path.replace("%2F", "/").replace("%5C", "/").replace("\\", "/")


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0).upper()
