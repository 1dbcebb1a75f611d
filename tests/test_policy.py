from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from failcore.policy import (
    Decision,
    GlobError,
    Policy,
    PolicyError,
    PolicyProblem,
    check_policy,
    connect_verdict,
    decide,
    glob_to_regex,
    load_policy,
    parse_policy,
    with_mode,
)
from failcore.shipped import default_policy_path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_POLICIES = sorted((REPO_ROOT / "policies").glob("**/*.yaml"))


def policy_from(text: str) -> Policy:
    return parse_policy(textwrap.dedent(text), "test.yaml")


def problems_of(text: str) -> list[PolicyProblem]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(textwrap.dedent(text), "test.yaml")
    return caught.value.problems


def single_problem(text: str) -> PolicyProblem:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


def request(
    policy: Policy,
    host: str = "api.example.com",
    *,
    port: int = 443,
    scheme: str = "https",
    method: str = "GET",
    path: str = "/",
) -> Decision:
    return decide(policy, host=host, port=port, scheme=scheme, method=method, path=path)


# ----------------------------------------------------------------------------------------------
# Parsing valid policies
# ----------------------------------------------------------------------------------------------


def test_defaults_when_settings_are_omitted() -> None:
    policy = policy_from("description: nothing else\n")
    assert policy.mode == "observe"
    assert policy.default == "ALLOW"
    assert policy.fail_open is True
    assert policy.redact_headers == frozenset()
    assert policy.rules == ()
    assert policy.description == "nothing else"


def test_values_are_normalised() -> None:
    policy = policy_from("""\
        mode: Enforce
        default: warn
        fail_open: false
        redact_headers: [X-My-Token, x-other]
        rules:
          - id: named
            host: API.Example.COM.
            method: [post, Get]
            scheme: HTTPS
            action: block
          - action: allow
        """)
    assert policy.mode == "enforce"
    assert policy.default == "WARN"
    assert policy.fail_open is False
    assert policy.redact_headers == frozenset({"x-my-token", "x-other"})
    first, second = policy.rules
    assert (first.id, first.action, first.line) == ("named", "BLOCK", 6)
    assert first.methods == frozenset({"POST", "GET"})
    assert first.schemes == frozenset({"https"})
    assert first.hosts is not None and first.hosts.exact == frozenset({"api.example.com"})
    assert (second.id, second.action, second.line) == ("rule-2", "ALLOW", 11)


def test_redact_headers_accepts_a_single_name_and_an_empty_list() -> None:
    assert policy_from("redact_headers: X-Key\n").redact_headers == frozenset({"x-key"})
    assert policy_from("redact_headers: []\n").redact_headers == frozenset()


def test_sha256_covers_the_exact_file_bytes(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbfmode: enforce\r\n"
    path = tmp_path / "p.yaml"
    path.write_bytes(data)
    policy = load_policy(path)
    assert policy.sha256 == hashlib.sha256(data).hexdigest()
    assert policy.source == str(path)
    assert parse_policy("mode: enforce\n").sha256 == hashlib.sha256(b"mode: enforce\n").hexdigest()


# ----------------------------------------------------------------------------------------------
# Problems: each reported with its exact position
# ----------------------------------------------------------------------------------------------


def test_yaml_syntax_error_uses_the_parser_mark() -> None:
    # A block-sequence dash inside a flow list: the mark points at the dash.
    problem = single_problem("mode: observe\nrules: [\n  - id: x\n")
    assert (problem.file, problem.line, problem.column) == ("test.yaml", 3, 3)
    assert problem.message.startswith("YAML syntax error")


def test_yaml_mapping_value_error() -> None:
    problem = single_problem("mode: observe\ndefault: ALLOW: BLOCK\n")
    assert (problem.line, problem.column) == (2, 15)
    assert "mapping values are not allowed" in problem.message


def test_duplicate_yaml_key_points_at_the_second_key() -> None:
    problem = single_problem("mode: observe\ndefault: ALLOW\nmode: enforce\n")
    assert (problem.line, problem.column) == (3, 1)
    assert "duplicate key" in problem.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "an empty file"),
        ("- mode: observe\n", "a list"),
        ("just text\n", 'the text "just text"'),
    ],
)
def test_top_level_must_be_a_mapping(text: str, expected: str) -> None:
    problem = single_problem(text)
    assert (problem.line, problem.column) == (1, 1)
    assert expected in problem.message


def test_unknown_top_level_key_names_the_key_and_lists_allowed_keys() -> None:
    problem = single_problem("mode: observe\nrulez: []\n")
    assert (problem.line, problem.column) == (2, 1)
    assert '"rulez"' in problem.message
    assert 'Did you mean "rules"?' in problem.message
    assert "version, description, mode, default, fail_open, redact_headers, rules" in problem.message


def test_unknown_rule_key() -> None:
    problem = single_problem("""\
        rules:
          - host: example.com
            hots: example.org
            action: BLOCK
        """)
    assert (problem.line, problem.column) == (3, 5)
    assert '"hots"' in problem.message and 'Did you mean "host"?' in problem.message
    assert "id, host, port, scheme, method, path, action, reason" in problem.message


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("budgets", "budgets: expected a list of budgets"),
        ("dlp", 'dlp: unknown key "daily_usd" in the dlp section'),
        ("prices", "prices: model 'daily_usd': expected a mapping of prices"),
    ],
)
def test_llm_sections_are_validated_not_ignored(key: str, expected: str) -> None:
    problem = single_problem(f"mode: enforce\n{key}:\n  daily_usd: 5\n")
    assert problem.line == 3
    assert expected in problem.message


def test_bad_action() -> None:
    problem = single_problem("rules:\n  - host: a.com\n    action: DENY\n")
    assert (problem.line, problem.column) == (3, 13)
    assert '"DENY"' in problem.message and "ALLOW, WARN or BLOCK" in problem.message


def test_missing_action_points_at_the_rule() -> None:
    problem = single_problem("rules:\n  - id: nothing\n    host: a.com\n")
    assert (problem.line, problem.column) == (2, 5)
    assert "missing required key 'action'" in problem.message
    assert "rule 1 (nothing)" in problem.message


def test_bad_default_action() -> None:
    problem = single_problem("default: deny\n")
    assert (problem.line, problem.column) == (1, 10)
    assert "not a valid action" in problem.message


def test_bad_mode() -> None:
    problem = single_problem("mode: enforcing\n")
    assert (problem.line, problem.column) == (1, 7)
    assert "'observe'" in problem.message and "'enforce'" in problem.message


def test_fail_open_must_be_a_real_boolean() -> None:
    problem = single_problem('fail_open: "yes"\n')
    assert (problem.line, problem.column) == (1, 12)
    assert "true or false" in problem.message


def test_port_of_wrong_type() -> None:
    problem = single_problem('rules:\n  - port: "abc"\n    action: BLOCK\n')
    assert (problem.line, problem.column) == (2, 11)
    assert '"abc" is not a port number' in problem.message


def test_port_out_of_range_points_at_the_list_item() -> None:
    problem = single_problem("rules:\n  - port: [443, 70000]\n    action: BLOCK\n")
    assert (problem.line, problem.column) == (2, 17)
    assert "70000 is out of range" in problem.message


def test_boolean_port_is_rejected() -> None:
    problem = single_problem("rules:\n  - port: true\n    action: BLOCK\n")
    assert (problem.line, problem.column) == (2, 11)


def test_rules_must_be_a_list() -> None:
    problem = single_problem("rules:\n  host: a.com\n  action: BLOCK\n")
    assert (problem.line, problem.column) == (2, 3)
    assert "expected a list of rules" in problem.message


def test_rule_must_be_a_mapping() -> None:
    problem = single_problem("rules:\n  - BLOCK\n")
    assert (problem.line, problem.column) == (2, 5)
    assert "rule 1" in problem.message


def test_unbalanced_bracket_in_glob() -> None:
    problem = single_problem('rules:\n  - path: "/v1/[abc"\n    action: BLOCK\n')
    assert (problem.line, problem.column) == (2, 11)
    assert "bad glob" in problem.message and "never closed" in problem.message


def test_reversed_range_in_glob() -> None:
    problem = single_problem("rules:\n  - path: /v[9-1]\n    action: BLOCK\n")
    assert (problem.line, problem.column) == (2, 11)
    assert "reversed" in problem.message


def test_bad_scheme_in_list() -> None:
    problem = single_problem("rules:\n  - scheme:\n      - https\n      - ftp\n    action: BLOCK\n")
    assert (problem.line, problem.column) == (4, 9)
    assert '"ftp"' in problem.message and "http, https, ws, wss" in problem.message


def test_duplicate_rule_id_points_at_the_second_id() -> None:
    problem = single_problem("""\
        rules:
          - id: same
            action: ALLOW
          - id: same
            action: BLOCK
        """)
    assert (problem.line, problem.column) == (4, 9)
    assert 'duplicate rule id "same"' in problem.message and "rule 1 on line 2" in problem.message


def test_duplicate_with_an_automatic_id_is_explained() -> None:
    problem = single_problem("rules:\n  - id: rule-2\n    action: ALLOW\n  - action: BLOCK\n")
    assert (problem.line, problem.column) == (4, 5)
    assert "automatic id" in problem.message


def test_path_must_start_with_a_slash() -> None:
    problem = single_problem("rules:\n  - path: v1/chat\n    action: BLOCK\n")
    assert (problem.line, problem.column) == (2, 11)
    assert "must start with '/'" in problem.message


def test_empty_host() -> None:
    problem = single_problem('rules:\n  - host: ""\n    action: BLOCK\n')
    assert (problem.line, problem.column) == (2, 11)
    assert "empty host" in problem.message


def test_missing_host_value_points_at_the_key() -> None:
    problem = single_problem("rules:\n  - host:\n    action: BLOCK\n")
    assert (problem.line, problem.column) == (2, 5)


@pytest.mark.parametrize(
    ("host", "fragment"),
    [
        ("api.example.com:443", "put the port in 'port:'"),
        ("https://api.example.com", "looks like a URL"),
        ("api.*.com", "only allowed as the whole host"),
        ("*example.com", "only allowed as the whole host"),
    ],
)
def test_malformed_hosts_are_explained(host: str, fragment: str) -> None:
    problem = single_problem(f'rules:\n  - host: "{host}"\n    action: BLOCK\n')
    assert (problem.line, problem.column) == (2, 11)
    assert fragment in problem.message


def test_empty_matcher_list_is_rejected() -> None:
    problem = single_problem("rules:\n  - method: []\n    action: BLOCK\n")
    assert (problem.line, problem.column) == (2, 13)
    assert "never match" in problem.message


def test_unsupported_version() -> None:
    problem = single_problem("version: 2\n")
    assert (problem.line, problem.column) == (1, 10)
    assert "version: 1" in problem.message


def test_all_problems_are_collected_in_one_pass_and_sorted() -> None:
    problems = problems_of("""\
        mode: loud
        fail_open: 1
        dlp: {stream: fast}
        rules:
          - id: one
            port: 0
            scheme: gopher
            action: maybe
          - id: one
            path: nope
            action: BLOCK
        """)
    positions = [(problem.line, problem.column) for problem in problems]
    assert positions == [(1, 7), (2, 12), (3, 15), (6, 11), (7, 13), (8, 13), (9, 9), (10, 11)]
    assert all(problem.file == "test.yaml" for problem in problems)


def test_policy_error_text_has_one_problem_per_line() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy("mode: x\ndefault: y\n", "p.yaml")
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("p.yaml:1:7: mode:")
    assert lines[1].startswith("p.yaml:2:10: default:")
    assert str(caught.value.problems[0]) == lines[0]


def test_load_policy_reports_a_missing_file_at_line_zero(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(PolicyError) as caught:
        load_policy(missing)
    [problem] = caught.value.problems
    assert (problem.file, problem.line, problem.column) == (str(missing), 0, 0)
    assert "cannot read policy file" in problem.message
    assert check_policy(missing) == caught.value.problems


def test_load_policy_reports_invalid_utf8_position(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"mode: observe\ndescription: caf\xe9\n")
    [problem] = check_policy(path)
    assert (problem.line, problem.column) == (2, 17)
    assert "UTF-8" in problem.message


def test_check_policy_returns_problems_with_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("mode: observe\nrules:\n  - action: ALOW\n")
    [problem] = check_policy(path)
    assert (problem.file, problem.line, problem.column) == (str(path), 3, 13)
    path.write_text("mode: observe\n")
    assert check_policy(path) == []


# ----------------------------------------------------------------------------------------------
# Matching
# ----------------------------------------------------------------------------------------------


def test_first_matching_rule_wins() -> None:
    policy = policy_from("""\
        mode: enforce
        rules:
          - id: exception
            host: api.example.com
            path: /v1/allowed
            action: ALLOW
          - id: block-host
            host: api.example.com
            action: BLOCK
          - id: never-reached
            host: api.example.com
            action: WARN
        """)
    assert request(policy, path="/v1/allowed/x").rule == "exception"
    assert request(policy, path="/v1/other").rule == "block-host"


def test_default_applies_when_nothing_matches() -> None:
    policy = policy_from("default: WARN\nrules:\n  - host: a.com\n    action: BLOCK\n")
    decision = request(policy, "b.com")
    assert decision == Decision("WARN", None, "no rule matched; default action WARN", False, "WARN")


def test_wildcard_host_matches_subdomains_but_not_the_apex() -> None:
    policy = policy_from('mode: enforce\nrules:\n  - host: "*.example.com"\n    action: BLOCK\n')
    assert request(policy, "api.example.com").decision == "BLOCK"
    assert request(policy, "a.b.EXAMPLE.com.").decision == "BLOCK"
    assert request(policy, "example.com").decision == "ALLOW"
    assert request(policy, "badexample.com").decision == "ALLOW"


def test_star_host_and_exact_host() -> None:
    policy = policy_from("""\
        mode: enforce
        rules:
          - host: Exact.Example.com
            action: WARN
          - host: "*"
            port: 8080
            action: BLOCK
        """)
    assert request(policy, "EXACT.example.COM").decision == "WARN"
    assert request(policy, "sub.exact.example.com").decision == "ALLOW"
    assert request(policy, "anything.test", port=8080).decision == "BLOCK"


def test_ipv6_hosts_are_compared_canonically() -> None:
    policy = policy_from('mode: enforce\nrules:\n  - host: "[0:0::1]"\n    action: BLOCK\n')
    assert request(policy, "::1").decision == "BLOCK"
    assert request(policy, "[::1]").decision == "BLOCK"


def test_port_scheme_and_method_constraints() -> None:
    policy = policy_from("""\
        mode: enforce
        rules:
          - port: [80, 8080]
            scheme: [http, ws]
            method: [POST, put]
            action: BLOCK
        """)
    assert request(policy, port=80, scheme="HTTP", method="post").decision == "BLOCK"
    assert request(policy, port=8080, scheme="ws", method="PUT").decision == "BLOCK"
    assert request(policy, port=443, scheme="http", method="POST").decision == "ALLOW"
    assert request(policy, port=80, scheme="https", method="POST").decision == "ALLOW"
    assert request(policy, port=80, scheme="http", method="GET").decision == "ALLOW"


def test_literal_path_is_a_prefix_match() -> None:
    policy = policy_from("mode: enforce\nrules:\n  - path: /v1/files\n    action: BLOCK\n")
    assert request(policy, path="/v1/files").decision == "BLOCK"
    assert request(policy, path="/v1/files/abc").decision == "BLOCK"
    assert request(policy, path="/v1/files-old").decision == "BLOCK"
    assert request(policy, path="/v1/file").decision == "ALLOW"
    assert request(policy, path="/v2/files").decision == "ALLOW"


def test_single_star_glob_stays_within_one_segment() -> None:
    policy = policy_from('mode: enforce\nrules:\n  - path: "/v1/*/messages"\n    action: BLOCK\n')
    assert request(policy, path="/v1/abc/messages").decision == "BLOCK"
    assert request(policy, path="/v1/a/b/messages").decision == "ALLOW"
    assert request(policy, path="/v1/abc/messages/extra").decision == "ALLOW"


def test_double_star_glob_crosses_segments() -> None:
    policy = policy_from('mode: enforce\nrules:\n  - path: "/v1/**/messages"\n    action: BLOCK\n')
    assert request(policy, path="/v1/a/b/c/messages").decision == "BLOCK"
    assert request(policy, path="/v2/a/messages").decision == "ALLOW"


def test_question_mark_and_character_classes() -> None:
    policy = policy_from("""\
        mode: enforce
        rules:
          - path: ["/v?/chat", "/api/[a-c]x", "/n/[!0-9]"]
            action: BLOCK
        """)
    assert request(policy, path="/v1/chat").decision == "BLOCK"
    assert request(policy, path="/v12/chat").decision == "ALLOW"
    assert request(policy, path="/api/bx").decision == "BLOCK"
    assert request(policy, path="/api/dx").decision == "ALLOW"
    assert request(policy, path="/n/z").decision == "BLOCK"
    assert request(policy, path="/n/5").decision == "ALLOW"
    assert request(policy, path="/n//").decision == "ALLOW"


def test_glob_metacharacters_in_literal_parts_are_escaped() -> None:
    policy = policy_from('mode: enforce\nrules:\n  - path: "/a.b/(x)+/*"\n    action: BLOCK\n')
    assert request(policy, path="/a.b/(x)+/y").decision == "BLOCK"
    assert request(policy, path="/aXb/(x)+/y").decision == "ALLOW"
    assert request(policy, path="/a.b/xx/y").decision == "ALLOW"


def test_query_string_and_fragment_are_stripped_before_matching() -> None:
    policy = policy_from('mode: enforce\nrules:\n  - path: "/v1/*"\n    action: BLOCK\n')
    assert request(policy, path="/v1/chat?model=x/y").decision == "BLOCK"
    assert request(policy, path="/v1/chat#frag/ment").decision == "BLOCK"
    assert request(policy, path="/v1/chat/deeper?x=1").decision == "ALLOW"


def test_dot_segments_and_encoded_unreserved_characters_cannot_dodge_a_rule() -> None:
    policy = policy_from("mode: enforce\nrules:\n  - path: /admin/\n    action: BLOCK\n")
    assert request(policy, path="/public/../admin/users").decision == "BLOCK"
    assert request(policy, path="//admin//users").decision == "BLOCK"
    assert request(policy, path="/%61dmin/users").decision == "BLOCK"
    assert request(policy, path="/./admin/").decision == "BLOCK"
    assert request(policy, path="/admin%2Fusers").decision == "BLOCK"  # werkzeug, uvicorn decode %2F


def test_star_path_and_method_match_anything() -> None:
    policy = policy_from('mode: enforce\nrules:\n  - path: "*"\n    method: "*"\n    action: BLOCK\n')
    rule = policy.rules[0]
    assert rule.paths is None and rule.methods is None
    assert request(policy, method="PATCH", path="/x/y/z").decision == "BLOCK"


def test_glob_translation() -> None:
    assert glob_to_regex("/a/*") == r"\x{2f}a\x{2f}[^/]*"
    assert glob_to_regex("/**") == r"\x{2f}.*"
    with pytest.raises(GlobError):
        glob_to_regex("/a[")


@pytest.mark.timeout(60)
def test_hostile_path_does_not_cause_catastrophic_backtracking() -> None:
    # A backtracking matcher needs ~20,000**5 steps here: it never returns (the timeout ends it). How
    # fast the linear one is: benchmarks/bench_bounds.py.
    policy = policy_from('mode: enforce\nrules:\n  - path: "/*a*a*a*a*a*b"\n    action: BLOCK\n')
    assert request(policy, path="/" + "a" * 20_000).decision == "ALLOW"
    assert request(policy, path="/" + "a" * 20_000 + "b").decision == "BLOCK"


# ----------------------------------------------------------------------------------------------
# Modes
# ----------------------------------------------------------------------------------------------

BLOCKING_POLICY = """\
    mode: {mode}
    rules:
      - id: no-evil
        host: evil.example
        action: BLOCK
        reason: evil is blocked
      - id: flag
        host: flag.example
        action: WARN
    """


def test_enforce_mode_blocks() -> None:
    policy = policy_from(BLOCKING_POLICY.format(mode="enforce"))
    assert request(policy, "evil.example") == Decision("BLOCK", "no-evil", "evil is blocked", True, "BLOCK")
    assert request(policy, "flag.example") == Decision("WARN", "flag", "matched rule 'flag'", False, "WARN")
    assert request(policy, "ok.example").would_block is False


def test_observe_mode_turns_block_into_warn_with_would_block() -> None:
    policy = policy_from(BLOCKING_POLICY.format(mode="observe"))
    assert request(policy, "evil.example") == Decision("WARN", "no-evil", "evil is blocked", True, "BLOCK")
    assert request(policy, "flag.example") == Decision("WARN", "flag", "matched rule 'flag'", False, "WARN")


def test_observe_mode_converts_a_blocking_default() -> None:
    policy = policy_from("mode: observe\ndefault: BLOCK\n")
    decision = request(policy)
    assert (decision.decision, decision.would_block, decision.matched_action) == ("WARN", True, "BLOCK")


def test_with_mode_overrides_and_recomputes_decisions() -> None:
    observe = policy_from(BLOCKING_POLICY.format(mode="observe"))
    enforce = with_mode(observe, "ENFORCE")
    assert enforce.mode == "enforce" and observe.mode == "observe"
    assert enforce.rules == observe.rules and enforce.sha256 == observe.sha256
    assert request(enforce, "evil.example").decision == "BLOCK"
    assert request(observe, "evil.example").decision == "WARN"
    assert with_mode(observe, None) is observe
    assert with_mode(with_mode(enforce, "observe"), None).mode == "observe"
    with pytest.raises(ValueError, match="observe"):
        with_mode(observe, "strict")


# ----------------------------------------------------------------------------------------------
# CONNECT verdicts
# ----------------------------------------------------------------------------------------------


def test_connect_total_block_rule_refuses() -> None:
    policy = policy_from("mode: enforce\nrules:\n  - id: evil\n    host: evil.example\n    action: BLOCK\n")
    verdict = connect_verdict(policy, host="Evil.Example", port=443)
    assert (verdict.decision, verdict.rule, verdict.would_block) == ("BLOCK", "evil", True)
    assert connect_verdict(policy, host="good.example", port=443).decision == "ALLOW"


def test_connect_partial_block_rule_does_not_refuse() -> None:
    policy = policy_from("""\
        mode: enforce
        rules:
          - id: no-files
            host: api.example.com
            path: /v1/files
            action: BLOCK
        """)
    verdict = connect_verdict(policy, host="api.example.com", port=443)
    assert (verdict.decision, verdict.rule) == ("ALLOW", None)


def test_connect_partial_allow_before_total_block_allows() -> None:
    policy = policy_from("""\
        mode: enforce
        rules:
          - id: read-only
            host: api.example.com
            method: GET
            action: ALLOW
          - id: rest-blocked
            host: api.example.com
            action: BLOCK
        """)
    verdict = connect_verdict(policy, host="api.example.com", port=443)
    assert (verdict.decision, verdict.rule, verdict.would_block) == ("ALLOW", "read-only", False)
    assert verdict.reason is not None and "each request is checked" in verdict.reason
    assert request(policy, method="POST").decision == "BLOCK"


def test_connect_partial_block_then_total_allow() -> None:
    policy = policy_from("""\
        mode: enforce
        default: BLOCK
        rules:
          - host: api.example.com
            method: DELETE
            action: BLOCK
          - id: host-ok
            host: api.example.com
            action: ALLOW
        """)
    assert connect_verdict(policy, host="api.example.com", port=443).rule == "host-ok"


def test_connect_default_block_refuses() -> None:
    policy = policy_from("mode: enforce\ndefault: BLOCK\nrules:\n  - host: ok.example\n    action: ALLOW\n")
    assert connect_verdict(policy, host="other.example", port=443).decision == "BLOCK"
    assert connect_verdict(policy, host="ok.example", port=443).decision == "ALLOW"


def test_connect_respects_ports_and_schemes() -> None:
    policy = policy_from("""\
        mode: enforce
        default: BLOCK
        rules:
          - id: plain-http-only
            host: api.example.com
            scheme: http
            action: ALLOW
          - id: tls-on-443
            host: api.example.com
            port: 443
            scheme: [https, wss]
            action: ALLOW
        """)
    assert connect_verdict(policy, host="api.example.com", port=443).rule == "tls-on-443"
    assert connect_verdict(policy, host="api.example.com", port=8443).decision == "BLOCK"


def test_connect_block_in_observe_mode_is_a_warning() -> None:
    policy = policy_from("mode: observe\ndefault: BLOCK\n")
    verdict = connect_verdict(policy, host="x.example", port=443)
    assert (verdict.decision, verdict.would_block, verdict.matched_action) == ("WARN", True, "BLOCK")


# ----------------------------------------------------------------------------------------------
# Shipped policies
# ----------------------------------------------------------------------------------------------


def test_expected_policies_are_shipped() -> None:
    names = {path.relative_to(REPO_ROOT / "policies").as_posix() for path in SHIPPED_POLICIES}
    assert {"default.yaml", "strict.yaml"} <= names
    assert len([name for name in names if name.startswith("examples/")]) >= 5


@pytest.mark.parametrize("path", SHIPPED_POLICIES, ids=lambda path: path.name)
def test_shipped_policy_loads(path: Path) -> None:
    assert check_policy(path) == []
    policy = load_policy(path)
    assert policy.description


def test_default_policy_is_permissive_observe() -> None:
    policy = load_policy(default_policy_path())
    assert (policy.mode, policy.default, policy.fail_open, policy.rules) == ("observe", "ALLOW", True, ())


def test_default_policy_is_the_repository_copy_in_a_checkout() -> None:
    assert default_policy_path() == REPO_ROOT / "policies" / "default.yaml"


def test_strict_policy_allows_providers_and_blocks_the_rest() -> None:
    policy = load_policy(REPO_ROOT / "policies" / "strict.yaml")
    assert policy.mode == "enforce"
    for host in (
        "api.openai.com",
        "api.anthropic.com",
        "generativelanguage.googleapis.com",
        "myres.openai.azure.com",
        "openrouter.ai",
        "api.mistral.ai",
        "api.groq.com",
        "api.together.xyz",
        "api.deepseek.com",
        "api.x.ai",
    ):
        assert request(policy, host, method="POST", path="/v1/chat").decision == "ALLOW", host
        assert connect_verdict(policy, host=host, port=443).decision == "ALLOW", host
    assert request(policy, "openai.azure.com").decision == "BLOCK"
    assert request(policy, "api.openai.com", scheme="http", port=80).decision == "BLOCK"
    assert request(policy, "localhost", port=11434, scheme="http").decision == "ALLOW"
    assert request(policy, "127.0.0.1", port=8000, scheme="http").decision == "ALLOW"
    assert connect_verdict(policy, host="exfil.example", port=443).decision == "BLOCK"
