from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from failcore.dlp import builtin_rules
from failcore.llm.usage import _KNOWN_OPENAI_COMPATIBLE_HOSTS, detect_api
from failcore.policy import (
    DEFAULT_DLP_SETTINGS,
    LLM_PROVIDERS,
    DlpSettings,
    Policy,
    PolicyError,
    check_policy,
    load_policy,
    model_glob_to_regex,
    parse_policy,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "policies" / "examples"
GITLEAKS_TOML = REPO_ROOT / "failcore" / "data" / "gitleaks" / "gitleaks.toml"


def policy_from(text: str, base_dir: Path = REPO_ROOT) -> Policy:
    return parse_policy(textwrap.dedent(text), "test.yaml", base_dir=base_dir)


def problems_of(text: str, base_dir: Path = REPO_ROOT) -> list[tuple[int, int, str]]:
    with pytest.raises(PolicyError) as caught:
        policy_from(text, base_dir)
    assert all(problem.file == "test.yaml" for problem in caught.value.problems)
    return [(problem.line, problem.column, problem.message) for problem in caught.value.problems]


def assert_problems(text: str, expected: list[tuple[int, int, str]], base_dir: Path = REPO_ROOT) -> None:
    """Each expected (line, column, fragment) must match the problem at the same index."""
    found = problems_of(text, base_dir)
    positions = [(line, column) for line, column, _ in found]
    assert positions == [(line, column) for line, column, _ in expected], found
    for (_, _, message), (_, _, fragment) in zip(found, expected, strict=True):
        assert fragment in message, (fragment, message)


# ----------------------------------------------------------------------------------------------
# budgets
# ----------------------------------------------------------------------------------------------


def test_budget_is_parsed_with_defaults() -> None:
    policy = policy_from("""\
        budgets:
          - id: openai-daily
            window: DAY
            scope: {host: "*.openai.com", provider: OpenAI, model: [gpt-4o*, "o?-mini"]}
            limits: {requests: 1000, cost_usd: 10, tool_calls: 3}
        """)
    (budget,) = policy.budgets
    assert (budget.id, budget.window, budget.window_seconds, budget.soft, budget.on_exceed, budget.line) == (
        "openai-daily",
        "day",
        86400,
        0.8,
        "block",
        2,
    )
    assert dict(budget.limits) == {"requests": 1000, "cost_usd": 10.0, "tool_calls": 3}
    assert isinstance(budget.limits["requests"], int) and isinstance(budget.limits["cost_usd"], float)
    scope = budget.scope
    assert scope.model_globs == ("gpt-4o*", "o?-mini")
    assert scope.matches(host="eu.openai.com", provider="openai", model="gpt-4o-mini")
    assert scope.matches(host="eu.openai.com", provider="openai", model="o3-mini")
    assert not scope.matches(host="openai.com", provider="openai", model="gpt-4o")
    assert not scope.matches(host="eu.openai.com", provider="azure_openai", model="gpt-4o")
    assert not scope.matches(host="eu.openai.com", provider="openai", model="o3")
    assert not scope.matches(host="eu.openai.com", provider=None, model="gpt-4o")


def test_budget_scope_star_matches_anything() -> None:
    (budget,) = policy_from("""\
        budgets:
          - {id: all, window: run, scope: {host: "*", provider: "*", model: "*"}, limits: {requests: 1}}
        """).budgets
    assert budget.scope.matches(host="x", provider=None, model=None)


def test_model_glob_star_crosses_slashes() -> None:
    assert model_glob_to_regex("openai/*") == "openai\\x{2f}.*"
    (budget,) = policy_from("""\
        budgets:
          - {id: routed, window: run, scope: {model: "*/gpt-4o"}, limits: {requests: 1}}
        """).budgets
    assert budget.scope.matches(host="openrouter.ai", provider="openrouter", model="openai/gpt-4o")
    assert not budget.scope.matches(host="openrouter.ai", provider="openrouter", model="openai/gpt-4o-mini")


def test_budget_errors_have_exact_positions() -> None:
    assert_problems(
        """\
        budgets:
          - id: a
            window: week
            scope: {host: "http://x", provider: opnai, model: "gpt[", colour: x}
            limits: {requests: 1.5, cost_usd: -1, tokens: 3, output_tokens: true}
            soft: 1.5
            on_exceed: explode
        """,
        [
            (3, 13, 'window: the text "week" is not a budget window'),
            (4, 19, 'scope: host: "http://x" looks like a URL'),
            (4, 41, 'provider: the text "opnai" is not a provider failcore recognises'),
            (4, 55, 'bad glob "gpt["'),
            (4, 63, 'unknown key "colour" in a budget scope'),
            (5, 24, "requests: expected a whole number greater than 0, got the number 1.5"),
            (5, 39, "cost_usd: expected a number greater than 0, got the number -1"),
            (5, 43, 'unknown key "tokens" in budget limits. Did you mean "total_tokens"?'),
            (5, 69, "output_tokens: expected a whole number greater than 0, got the boolean true"),
            (6, 11, "soft: expected a fraction of each limit greater than 0 and at most 1"),
            (7, 16, 'on_exceed: the text "explode" is not valid'),
        ],
    )


def test_budget_problems_name_the_budget() -> None:
    problems = problems_of("budgets:\n  - {id: spend, window: hour, limits: {requests: 0}}\n")
    assert problems == [
        (
            2,
            50,
            "budget 1 (spend): limits: requests: expected a whole number greater than 0, got the number 0",
        )
    ]


def test_budget_required_keys() -> None:
    assert_problems(
        """\
        budgets:
          - window: run
            limits: {requests: 1}
          - id: no-window
            limits: {requests: 1}
          - id: no-limits
            window: run
          - id: empty-limits
            window: run
            limits: {}
          - id: list-limits
            window: run
            limits: [1]
        """,
        [
            (2, 5, "budget 1: missing required key 'id'"),
            (4, 5, "budget 2 (no-window): missing required key 'window'"),
            (6, 5, "budget 3 (no-limits): missing limits"),
            (10, 13, "budget 4 (empty-limits): limits: give at least one limit"),
            (13, 13, "budget 5 (list-limits): limits: expected a mapping"),
        ],
    )


def test_budget_structure_errors() -> None:
    assert_problems(
        """\
        budgets:
          - just text
          - id: x
            window: run
            limits: {requests: 1}
            scope: [api.openai.com]
            cap: 3
        """,
        [
            (2, 5, "budget 1: expected a mapping"),
            (6, 12, "budget 2 (x): scope: expected a mapping"),
            (7, 5, 'budget 2 (x): unknown key "cap" in a budget'),
        ],
    )
    assert_problems("budgets: {id: x}\n", [(1, 10, "budgets: expected a list of budgets")])


def test_duplicate_budget_ids() -> None:
    assert_problems(
        """\
        budgets:
          - {id: same, window: run, limits: {requests: 1}}
          - {id: same, window: day, limits: {requests: 1}}
        """,
        [(3, 10, 'budget 2: duplicate budget id "same", already used by budget 1 on line 2')],
    )


def test_wall_seconds_only_for_run_windows() -> None:
    assert_problems(
        "budgets:\n  - {id: w, window: hour, limits: {wall_seconds: 60}}\n",
        [(2, 36, "wall_seconds only applies to 'window: run'")],
    )
    (budget,) = policy_from("budgets:\n  - {id: w, window: run, limits: {wall_seconds: 60.5}}\n").budgets
    assert budget.limits["wall_seconds"] == 60.5


def test_known_providers_cover_detect_api() -> None:
    assert set(_KNOWN_OPENAI_COMPATIBLE_HOSTS.values()) <= set(LLM_PROVIDERS)


# One call per API family as its provider's documentation spells it (host, path, body): whatever
# provider detect_api names for it must be one a budget's `scope.provider` accepts.
_DOCUMENTED_CALLS = [
    ("api.openai.com", "/v1/chat/completions", {"model": "gpt-4o", "messages": []}),
    ("x.openai.azure.com", "/openai/deployments/d/chat/completions?api-version=2024-10-21", {"messages": []}),
    ("localhost:8000", "/v1/chat/completions", {"model": "m", "messages": []}),
    ("api.anthropic.com", "/v1/messages", {"model": "claude", "messages": [], "max_tokens": 1}),
    ("localhost:4000", "/v1/messages", {"model": "claude", "messages": [], "max_tokens": 1}),
    ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.0-flash:generateContent", {"contents": 0}),
    (
        "us-central1-aiplatform.googleapis.com",
        "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent",
        {"contents": []},
    ),
    ("bedrock-runtime.us-east-1.amazonaws.com", "/model/anthropic.claude-3-haiku-20240307-v1:0/invoke", {}),
    ("bedrock-runtime.us-east-1.amazonaws.com", "/model/amazon.nova-lite-v1:0/converse", {"messages": []}),
    ("localhost:11434", "/api/chat", {"model": "llama3", "messages": []}),
    ("openrouter.ai", "/api/v1/chat/completions", {"model": "m", "messages": []}),
]


@pytest.mark.parametrize(("host", "path", "body"), _DOCUMENTED_CALLS, ids=lambda v: str(v)[:40])
def test_every_detected_provider_can_scope_a_budget(host: str, path: str, body: dict) -> None:
    found = detect_api(host, path, body)
    assert found is not None, (host, path)
    provider = found[0]
    assert provider in LLM_PROVIDERS
    (budget,) = policy_from(
        f"budgets:\n  - {{id: b, window: run, scope: {{provider: {provider}}}, limits: {{requests: 1}}}}\n"
    ).budgets
    assert provider in budget.scope.providers


# ----------------------------------------------------------------------------------------------
# dlp
# ----------------------------------------------------------------------------------------------


def test_policy_without_dlp_section_gets_the_default_settings() -> None:
    dlp = policy_from("mode: observe\n").dlp
    assert dlp is DEFAULT_DLP_SETTINGS
    assert (dlp.enabled, dlp.declared, dlp.stream, dlp.default_action) == (True, False, "side", "WARN")
    assert (dlp.scan_request, dlp.scan_response) == (True, True)
    assert (dlp.custom_rules, dlp.gitleaks_path) == ((), None)
    assert dlp.action_for("aws-access-key-id", "critical") == "WARN"


def test_empty_dlp_section_is_declared_and_enabled() -> None:
    dlp = policy_from("dlp:\n").dlp
    assert (dlp.enabled, dlp.declared) == (True, True)


def test_dlp_section_is_parsed() -> None:
    dlp = policy_from(f"""\
        dlp:
          enabled: false
          stream: Strict
          default_action: allow
          severity_actions: {{critical: BLOCK, Medium: warn}}
          rule_actions:
            {{aws-access-key-id: BLOCK, email-address: ALLOW, acme-token: WARN, 1password-secret-key: BLOCK}}
          scan: {{request: false}}
          import_gitleaks: {GITLEAKS_TOML.relative_to(REPO_ROOT)}
          custom:
            - id: acme-token
              regex: 'acme_[a-z0-9]{{32}}'
              keywords: [ACME_]
              severity: high
              description: ACME internal token
        """).dlp
    assert (dlp.enabled, dlp.declared, dlp.stream, dlp.default_action) == (False, True, "strict", "ALLOW")
    assert dict(dlp.severity_actions) == {"critical": "BLOCK", "medium": "WARN"}
    assert dict(dlp.rule_actions) == {
        "aws-access-key-id": "BLOCK",
        "email-address": "ALLOW",
        "acme-token": "WARN",
        "1password-secret-key": "BLOCK",
    }
    assert (dlp.scan_request, dlp.scan_response) == (False, True)
    assert dlp.gitleaks_path == GITLEAKS_TOML
    assert len(dlp.gitleaks_rules) > 100 and all(rule.source == "gitleaks" for rule in dlp.gitleaks_rules)
    assert dlp.gitleaks_skipped and all(reason for _, reason in dlp.gitleaks_skipped)
    (custom,) = dlp.custom_rules
    assert (custom.id, custom.keywords, custom.severity) == ("acme-token", ("acme_",), "high")
    assert custom.source == "policy"
    assert type(custom.regex) is str


def test_action_for_precedence() -> None:
    dlp = policy_from("""\
        dlp:
          default_action: WARN
          severity_actions: {critical: BLOCK, low: ALLOW}
          rule_actions: {private-key: ALLOW, email-address: BLOCK}
        """).dlp
    assert dlp.action_for("private-key", "critical") == "ALLOW"  # rule beats severity
    assert dlp.action_for("email-address", "low") == "BLOCK"  # rule beats severity
    assert dlp.action_for("aws-access-key-id", "critical") == "BLOCK"  # severity beats default
    assert dlp.action_for("jwt", "low") == "ALLOW"
    assert dlp.action_for("jwt", "high") == "WARN"  # default
    assert DlpSettings(default_action="BLOCK").action_for("jwt", "low") == "BLOCK"


def test_dlp_errors_have_exact_positions() -> None:
    assert_problems(
        """\
        dlp:
          enabled: yes
          stream: fast
          default_action: DENY
          severity_actions: {urgent: BLOCK, high: NOPE}
          rule_actions: {aws-acces-key-id: BLOCK, jwt: maybe}
          scan: {request: maybe, body: true}
          colour: x
        """,
        [
            (2, 12, "dlp: enabled: expected true or false"),
            (3, 11, 'dlp: stream: the text "fast" is not valid'),
            (4, 19, 'dlp: default_action: the text "DENY" is not a valid action'),
            (5, 22, 'dlp: severity_actions: the text "urgent" is not a severity'),
            (5, 43, 'dlp: severity_actions: high: the text "NOPE" is not a valid action'),
            (6, 18, 'unknown DLP rule id "aws-acces-key-id"'),
            (6, 48, 'dlp: rule_actions: jwt: the text "maybe" is not a valid action'),
            (7, 19, 'dlp: scan: request: expected true or false, got the text "maybe"'),
            (7, 26, 'dlp: scan: unknown key "body" in dlp scan'),
            (8, 3, 'dlp: unknown key "colour" in the dlp section'),
        ],
    )


def test_unknown_rule_id_lists_close_matches() -> None:
    ((_, _, message),) = problems_of("dlp:\n  rule_actions: {aws-acces-key-id: BLOCK}\n")
    assert "Close matches: aws-access-key-id" in message
    assert "aws-access-key-id" in {rule.id for rule in builtin_rules()}


def test_dlp_section_must_be_a_mapping() -> None:
    assert_problems("dlp: true\n", [(1, 6, "dlp: expected a mapping of DLP settings")])
    assert_problems("dlp:\n  custom: {id: x}\n", [(2, 11, "dlp: custom: expected a list of rules")])
    assert_problems("dlp:\n  rule_actions: [jwt]\n", [(2, 17, "dlp: rule_actions: expected a mapping")])


def test_custom_rule_errors_point_at_the_field_or_rule() -> None:
    assert_problems(
        """\
        dlp:
          custom:
            - id: acme-token
              regex: '(a+)+\\1'
            - id: Bad_Id
              regex: x
            - id: x-rule
              regex: x
              severity: urgent
            - id: email-address
              regex: x
            - id: y-rule
              regex: y
              colour: red
            - id: x-rule
              regex: z
            - just text
            - regex: q
        """,
        [
            (4, 14, "dlp: custom rule 1: custom DLP rule 'acme-token': regex rejected"),
            (5, 11, "dlp: custom rule 2: custom DLP rule 'Bad_Id': id must be kebab-case"),
            (9, 17, "dlp: custom rule 3: custom DLP rule 'x-rule': severity must be one of"),
            (10, 11, 'dlp: custom rule 4: id "email-address" is already used by a built-in rule'),
            (14, 7, "dlp: custom rule 5: custom DLP rule 'y-rule': unknown field(s) colour"),
            (15, 11, 'dlp: custom rule 6: id "x-rule" is already used by another custom rule'),
            (17, 7, "dlp: custom rule 7: custom DLP rule must be a mapping"),
            (18, 7, "dlp: custom rule 8: custom DLP rule None: id must be kebab-case"),
        ],
    )


def test_custom_rule_with_a_number_for_a_key_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nmode: observe\ndlp:\n  custom:\n    - id: a\n      regex: abc\n      7: x\n")
    problems = [str(p) for p in check_policy(path)]
    assert problems == [f"{path}:5:7: dlp: custom rule 1: custom DLP rule 'a': unknown field(s) 7"]


def test_broken_custom_rule_does_not_also_fail_its_rule_action() -> None:
    assert_problems(
        """\
        dlp:
          rule_actions: {acme-token: BLOCK}
          custom:
            - {id: acme-token, regex: 'acme_(', keywords: [acme_]}
        """,
        [(4, 31, "regex rejected")],
    )


def test_import_gitleaks_is_relative_to_the_policy_file(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "leaks.toml").write_text(
        "[[rules]]\nid = \"tiny-token\"\nregex = '''tiny_[a-z]{8}'''\nkeywords = [\"tiny_\"]\n"
    )
    policy_path = tmp_path / "policies" / "p.yaml"
    policy_path.parent.mkdir()
    policy_path.write_text(
        "dlp:\n  import_gitleaks: ../rules/leaks.toml\n  rule_actions: {tiny-token: BLOCK}\n"
    )
    dlp = load_policy(policy_path).dlp
    assert dlp.gitleaks_path == rules_dir / "leaks.toml"
    assert [rule.id for rule in dlp.gitleaks_rules] == ["tiny-token"]
    assert dlp.action_for("tiny-token", "high") == "BLOCK"


def test_import_gitleaks_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[[rules]\nid = 1\n")
    (tmp_path / "weird.toml").write_text('rules = ["not a table"]\n')
    assert_problems(
        """\
        dlp:
          import_gitleaks: missing.toml
        """,
        [(2, 20, f"dlp: import_gitleaks: cannot read {tmp_path / 'missing.toml'}: No such file")],
        base_dir=tmp_path,
    )
    assert_problems("dlp:\n  import_gitleaks: bad.toml\n", [(2, 20, "is not valid TOML")], base_dir=tmp_path)
    assert_problems(
        "dlp:\n  import_gitleaks: weird.toml\n",
        [(2, 20, "is not a usable gitleaks config")],
        base_dir=tmp_path,
    )
    assert_problems(
        "dlp:\n  import_gitleaks: [a]\n", [(2, 20, "expected bundled or the path of a gitleaks.toml file")]
    )


def test_rule_actions_are_not_checked_when_the_gitleaks_import_failed(tmp_path: Path) -> None:
    text = "dlp:\n  import_gitleaks: nope.toml\n  rule_actions: {some-gitleaks-rule: BLOCK}\n"
    problems = problems_of(text, base_dir=tmp_path)
    assert [(line, column) for line, column, _ in problems] == [(2, 20)]


# ----------------------------------------------------------------------------------------------
# prices
# ----------------------------------------------------------------------------------------------


def test_prices_are_kept_as_plain_overrides() -> None:
    prices = policy_from("prices:\n  my-finetune: {input: 3, output: 12.0, cached_input: 1.5}\n").prices
    assert prices == {"my-finetune": {"input": 3, "output": 12.0, "cached_input": 1.5}}
    assert type(prices) is dict and type(prices["my-finetune"]) is dict
    assert type(prices["my-finetune"]["output"]) is float


def test_price_errors_have_exact_positions() -> None:
    assert_problems(
        """\
        prices:
          my-finetune: {input: abc, output: 12.0}
          other: {input: 1}
          third: {input: 1, output: 1, wat: 2}
          fourth: 5
          fine: {input: 1, output: 2}
        """,
        [
            (2, 24, "prices: model 'my-finetune' field 'input': not a number: 'abc'"),
            (3, 10, "prices: model 'other' field 'output': required for a new model"),
            (4, 32, "prices: model 'third' field 'wat': unknown field"),
            (5, 3, "prices: model 'fourth': expected a mapping of prices"),
        ],
    )
    assert_problems("prices: [gpt-4o]\n", [(1, 9, "prices: expected a mapping of model id to prices")])


# ----------------------------------------------------------------------------------------------
# examples and one-pass collection
# ----------------------------------------------------------------------------------------------


def test_all_sections_report_in_one_pass() -> None:
    found = problems_of("""\
        mode: loud
        budgets:
          - {id: b, window: week, limits: {requests: 1}}
        dlp:
          stream: fast
        prices:
          m: {input: 1}
        """)
    assert [(line, column) for line, column, _ in found] == [(1, 7), (3, 21), (5, 11), (7, 6)]


@pytest.mark.parametrize("name", ["budgets.yaml", "dlp.yaml", "prices.yaml"])
def test_example_policies_load(name: str) -> None:
    policy = load_policy(EXAMPLES / name)
    assert policy.description


def test_examples_say_what_they_configure() -> None:
    budgets = load_policy(EXAMPLES / "budgets.yaml").budgets
    assert [budget.id for budget in budgets] == ["openai-daily", "claude-per-minute", "run-safety-net"]
    assert budgets[2].on_exceed == "cut_stream" and budgets[2].limits["wall_seconds"] == 3600
    dlp = load_policy(EXAMPLES / "dlp.yaml").dlp
    assert dlp.gitleaks_path == GITLEAKS_TOML
    assert dlp.action_for("acme-token", "high") == "BLOCK"
    assert dlp.action_for("email-address", "medium") == "ALLOW"
    assert dlp.action_for("private-key", "critical") == "BLOCK"
    prices = load_policy(EXAMPLES / "prices.yaml").prices
    assert prices["my-finetune"] == {"input": 3.0, "output": 12.0, "cached_input": 1.5}


def test_import_gitleaks_bundled_is_the_rule_set_shipped_in_the_package(tmp_path: Path) -> None:
    bundled = parse_policy("version: 1\ndlp:\n  import_gitleaks: bundled\n", base_dir=tmp_path)
    by_path = parse_policy(f"version: 1\ndlp:\n  import_gitleaks: {GITLEAKS_TOML}\n", base_dir=tmp_path)
    ids = {rule.id for rule in bundled.dlp.gitleaks_rules}
    assert ids == {rule.id for rule in by_path.dlp.gitleaks_rules}
    assert bundled.dlp.gitleaks_path == by_path.dlp.gitleaks_path
    assert "github-pat" in ids and len(ids) > 150


def test_dlp_unscannable_defaults_to_block_and_is_validated() -> None:
    assert policy_from("dlp: {default_action: BLOCK}\n").dlp.unscannable == "BLOCK"
    assert policy_from("dlp: {unscannable: warn}\n").dlp.unscannable == "WARN"
    expected = 'dlp: unscannable: the text "ALLOW" is not valid; use BLOCK'
    assert_problems("dlp:\n  unscannable: ALLOW\n", [(2, 16, expected)])
