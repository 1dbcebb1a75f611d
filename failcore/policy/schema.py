"""The policy file's schema: one declarative description per section, walked by `validate.read_section`.

Each section lists its fields in the order they are checked, with their kind, default, whether they
are required and the advice a bad value gets; `build` turns the checked values into the model's types.
README's policy field table is checked against `documented_fields()` (tests/test_policy_schema.py), so
a field cannot be added here without a row there, nor the other way round.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import MappingProxyType

from failcore.policy import delegated, values
from failcore.policy.model import (
    ACTIONS,
    BUDGET_METRICS,
    BUDGET_WINDOWS,
    COUNT_METRICS,
    DEFAULT_DLP_SETTINGS,
    DEFAULT_SOFT_FRACTION,
    DLP_STREAM_MODES,
    MODES,
    ON_EXCEED,
    SUPPORTED_VERSION,
    BudgetScope,
    BudgetSpec,
    DlpSettings,
    Rule,
)
from failcore.policy.nodes import key_pos, node_pos, value_pos
from failcore.policy.runtime import DEFAULT_EXEC_RULES, DEFAULT_FS_RULES, DEFAULT_NET_RULES
from failcore.policy.runtime_schema import EXEC, FS, NETWORK, TOOL, TOOLS
from failcore.policy.validate import (
    Choice,
    Const,
    Custom,
    Each,
    Field,
    Flag,
    Here,
    MapOf,
    Name,
    Number,
    Section,
    SectionList,
    Text,
)

_ACTION = Choice(ACTIONS, "{got} is not a valid action; use ALLOW, WARN or BLOCK", upper=True)

# --------------------------------------------------------------------------------------------------
# rules[]
# --------------------------------------------------------------------------------------------------


def _rule(v: dict[str, object], here: Here) -> Rule:
    assert here.name is not None
    return Rule(
        id=here.name,
        action=v["action"],  # type: ignore[arg-type]
        reason=v["reason"],  # type: ignore[arg-type]
        hosts=v["host"],  # type: ignore[arg-type]
        ports=v["port"],  # type: ignore[arg-type]
        schemes=v["scheme"],  # type: ignore[arg-type]
        methods=v["method"],  # type: ignore[arg-type]
        paths=v["path"],  # type: ignore[arg-type]
        line=node_pos(here.node)[0],
    )


RULE = Section(
    fields=(
        Field("id", Name(), null="check"),
        Field(
            "action",
            _ACTION,
            required="missing required key 'action'; add e.g. 'action: BLOCK' (one of ALLOW, WARN, BLOCK)",
            null="check",
        ),
        Field("reason", Text("; quote it")),
        Field("host", Each(values.host_item, values.hosts), null="check"),
        Field("port", Each(values.port_item, values.frozen_set), null="check"),
        Field("scheme", Each(values.scheme_item, values.frozen_set), null="check"),
        Field("method", Each(values.method_item, values.frozen_set), null="check"),
        Field("path", Each(values.path_item, values.paths), null="check"),
    ),
    allowed=("id", "host", "port", "scheme", "method", "path", "action", "reason"),
    where="in a rule",
    key_word="rule keys",
    name_field="id",
    build=_rule,
)

# --------------------------------------------------------------------------------------------------
# budgets[]
# --------------------------------------------------------------------------------------------------


def _scope(v: dict[str, object], here: Here) -> BudgetScope:
    globs, regex = v["model"] or (None, None)  # type: ignore[misc]
    return BudgetScope(hosts=v["host"], providers=v["provider"], model_globs=globs, model_regex=regex)  # type: ignore[arg-type]


SCOPE = Section(
    fields=(
        Field("host", Each(values.host_item, values.hosts)),
        Field("provider", Each(values.provider_item, values.frozen_set)),
        Field("model", Each(values.model_item, values.models, stop_at_any=True)),
    ),
    where="in a budget scope",
    key_word="scope keys",
    not_mapping="expected a mapping such as 'host: api.openai.com', got {got}",
    build=_scope,
)


def _check_limits(v: dict[str, object], here: Here) -> None:
    budget = here.outer
    assert budget is not None
    if not here.node:
        here.add(
            value_pos(budget.node, "limits"),
            f"{here.prefix}give at least one limit (any of {', '.join(BUDGET_METRICS)})",
        )
    window = budget.values.get("window")
    if "wall_seconds" in here.node and window is not None and window != "run":
        here.add(
            key_pos(here.node, "wall_seconds"),
            f"{here.prefix}wall_seconds only applies to 'window: run' (it limits how long a run "
            f"lasts); this budget's window is {window}",
        )


def _limits(v: dict[str, object], here: Here) -> dict[str, object]:
    # In the order written.
    return {metric: v[metric] for metric in here.node if v.get(metric) is not None}


LIMITS = Section(
    fields=tuple(
        Field(
            metric,
            Number("expected a whole number greater than 0, got {got}", whole=True)
            if metric in COUNT_METRICS
            else Number("expected a number greater than 0, got {got}"),
            null="check",
        )
        for metric in BUDGET_METRICS
    ),
    where="in budget limits",
    key_word="limit names",
    not_mapping="expected a mapping such as 'cost_usd: 10.0', got {got}",
    check=_check_limits,
    build=_limits,
)


def _budget(v: dict[str, object], here: Here) -> BudgetSpec:
    return BudgetSpec(
        id=v["id"],  # type: ignore[arg-type]
        window=v["window"],  # type: ignore[arg-type]
        limits=MappingProxyType(v["limits"]),  # type: ignore[arg-type]
        scope=v["scope"],  # type: ignore[arg-type]
        soft=v["soft"],  # type: ignore[arg-type]
        on_exceed=v["on_exceed"],  # type: ignore[arg-type]
        line=node_pos(here.node)[0],
    )


BUDGET = Section(
    fields=(
        Field(
            "id",
            Name(),
            required="missing required key 'id'; add e.g. 'id: openai-daily' "
            "(the id is shown on the tape and in the 429 answer)",
            null="check",
        ),
        Field(
            "window",
            Choice(
                BUDGET_WINDOWS,
                "{got} is not a budget window; use run (this proxy run), "
                "or minute, hour or day (rolling windows of 60 s, 3600 s or 86400 s)",
            ),
            required="missing required key 'window'; add e.g. 'window: day' "
            f"(one of {', '.join(BUDGET_WINDOWS)})",
            null="check",
        ),
        Field("scope", SCOPE, default=BudgetScope()),
        Field(
            "limits",
            LIMITS,
            default={},
            required="missing limits; add e.g. 'limits: {cost_usd: 10.0}' "
            f"(any of {', '.join(BUDGET_METRICS)})",
            null="missing",
        ),
        Field(
            "soft",
            Number(
                "expected a fraction of each limit greater than 0 and at most 1 (e.g. 0.8 warns "
                "from 80%), got {got}",
                high=1,
            ),
            default=DEFAULT_SOFT_FRACTION,
        ),
        Field(
            "on_exceed",
            Choice(
                ON_EXCEED,
                "{got} is not valid; use block (finish calls in flight, refuse "
                "the next request) or cut_stream (also cut a streaming response at the limit)",
            ),
            default="block",
        ),
    ),
    where="in a budget",
    key_word="budget keys",
    name_field="id",
    build=_budget,
)

# --------------------------------------------------------------------------------------------------
# dlp
# --------------------------------------------------------------------------------------------------

SCAN = Section(
    fields=(Field("request", Flag(), default=True), Field("response", Flag(), default=True)),
    where="in dlp scan",
    key_word="setting names",
    not_mapping="expected a mapping such as '{{request: true, response: true}}', got {got}",
    build=lambda v, here: (v["request"], v["response"]),
)


def _dlp(v: dict[str, object], here: Here) -> DlpSettings:
    scan_request, scan_response = v["scan"]  # type: ignore[misc]
    gitleaks = v["import_gitleaks"]
    path, rules, skipped = (None, (), ()) if gitleaks in (None, delegated.GITLEAKS_FAILED) else gitleaks  # type: ignore[misc]
    custom_rules, _ = v["custom"]  # type: ignore[misc]
    return DlpSettings(
        enabled=v["enabled"],  # type: ignore[arg-type]
        declared=True,
        stream=v["stream"],  # type: ignore[arg-type]
        default_action=v["default_action"],  # type: ignore[arg-type]
        severity_actions=v["severity_actions"],  # type: ignore[arg-type]
        rule_actions=v["rule_actions"],  # type: ignore[arg-type]
        scan_request=scan_request,
        scan_response=scan_response,
        gitleaks_path=path,
        gitleaks_rules=rules,
        gitleaks_skipped=skipped,
        custom_rules=custom_rules,
        unscannable=v["unscannable"],  # type: ignore[arg-type]
    )


DLP = Section(
    # import_gitleaks and custom come before rule_actions, whose ids they may define.
    fields=(
        Field("scan", SCAN, default=(True, True)),
        Field("import_gitleaks", Custom(delegated.read_gitleaks)),
        Field("custom", Custom(delegated.read_custom), default=((), set())),
        Field("enabled", Flag(), default=True),
        Field(
            "stream",
            Choice(
                DLP_STREAM_MODES,
                "{got} is not valid; use side (scan a copy, never delay the stream) or strict (hold "
                "back a sliding window and cut the stream on a BLOCK hit)",
            ),
            default="side",
        ),
        Field("default_action", _ACTION, default="WARN", null="check"),
        Field(
            "severity_actions",
            MapOf(
                delegated.severity_key, _ACTION, "expected a mapping such as '{{critical: BLOCK}}', got {got}"
            ),
            default=DEFAULT_DLP_SETTINGS.severity_actions,
        ),
        Field(
            "rule_actions",
            MapOf(
                delegated.rule_id_key,
                _ACTION,
                "expected a mapping such as '{{aws-access-key-id: BLOCK}}', got {got}",
            ),
            default=DEFAULT_DLP_SETTINGS.rule_actions,
        ),
        Field(
            "unscannable",
            Choice(
                ("BLOCK", "WARN"),
                "{got} is not valid; use BLOCK (refuse a body that cannot be scanned whole) or WARN "
                "(forward it with a warning)",
                upper=True,
            ),
            default="BLOCK",
        ),
    ),
    allowed=(
        "enabled",
        "stream",
        "default_action",
        "severity_actions",
        "rule_actions",
        "scan",
        "import_gitleaks",
        "custom",
        "unscannable",
    ),
    where="in the dlp section",
    key_word="setting names",
    not_mapping="expected a mapping of DLP settings such as 'default_action: WARN', got {got}",
    build=_dlp,
)

# --------------------------------------------------------------------------------------------------
# network, and the top level
# --------------------------------------------------------------------------------------------------


def _policy(v: dict[str, object], here: Here) -> dict[str, object]:
    """Policy() arguments; the loader adds source and sha256."""
    return {
        "mode": v["mode"],
        "default": v["default"],
        "fail_open": v["fail_open"],
        "redact_headers": v["redact_headers"],
        "rules": v["rules"],
        "description": v["description"],
        "budgets": v["budgets"],
        "dlp": v["dlp"],
        "prices": dict(v["prices"]),  # type: ignore[call-overload]
        "block_private_resolved": v["network"][0],  # type: ignore[index]
        "network": v["network"][1],  # type: ignore[index]
        "fs": v["fs"],
        "exec": v["exec"],
        "tools": v["tools"],
    }


POLICY = Section(
    fields=(
        Field(
            "version",
            Const(
                SUPPORTED_VERSION,
                "unsupported policy format version ({got}); "
                f"this failcore reads 'version: {SUPPORTED_VERSION}'",
            ),
            null="check",
        ),
        Field("description", Text("; put the text in quotes")),
        Field(
            "mode",
            Choice(
                MODES,
                "{got} is not a valid mode; "
                "use 'observe' (record and warn only) or 'enforce' (actually block)",
            ),
            default="observe",
            null="check",
        ),
        Field("default", _ACTION, default="ALLOW", null="check"),
        Field(
            "fail_open",
            Flag(" (YAML 1.2 reads yes/no/on/off as text, so write true or false)"),
            default=True,
            null="check",
        ),
        Field(
            "redact_headers", Each(values.header_item, values.frozen_set, empty_ok=True), default=frozenset()
        ),
        Field(
            "rules",
            SectionList(
                RULE,
                "rule",
                "expected a list of rules (each rule starts with '- '), got {got}",
                "'- host: api.openai.com' plus 'action: ALLOW'",
                auto_id=True,
            ),
            default=(),
        ),
        Field(
            "budgets",
            SectionList(
                BUDGET,
                "budget",
                "expected a list of budgets (each starts with '- id: ...'), got {got}",
                "'- id: openai-daily' plus 'window:' and 'limits:'",
            ),
            default=(),
        ),
        Field("dlp", DLP, default=DEFAULT_DLP_SETTINGS, null="empty"),
        Field("prices", Custom(delegated.read_prices), default={}),
        Field("network", NETWORK, default=(False, DEFAULT_NET_RULES), null="empty"),
        Field("fs", FS, default=DEFAULT_FS_RULES, null="empty"),
        Field("exec", EXEC, default=DEFAULT_EXEC_RULES, null="empty"),
        Field("tools", TOOLS, default=MappingProxyType({})),
    ),
    where="at the top level",
    key_word="setting names",
    build=_policy,
)


def documented_fields() -> Iterator[str]:
    """Every field as README's policy table names it: top-level fields, a mapping section's fields as
    `section.field`, a list's as `list[].field` (after a row for the list itself)."""
    for top in POLICY.fields:
        kind = top.kind
        if isinstance(kind, Section):
            yield from (f"{top.name}.{name}" for name in kind.keys)
        elif isinstance(kind, MapOf) and isinstance(kind.value, Section):
            yield from (f"{top.name}.<name>.{name}" for name in kind.value.keys)
        elif isinstance(kind, SectionList):
            yield top.name
            yield from (f"{top.name}[].{name}" for name in kind.item.keys)
        else:
            yield top.name


# Each section's keys, in the order the "Allowed keys" hint lists them.
TOP_LEVEL_KEYS = POLICY.keys
RULE_KEYS = RULE.keys
BUDGET_KEYS = BUDGET.keys
BUDGET_SCOPE_KEYS = SCOPE.keys
DLP_KEYS = DLP.keys
DLP_SCAN_KEYS = SCAN.keys
NETWORK_KEYS = NETWORK.keys
FS_KEYS = FS.keys
EXEC_KEYS = EXEC.keys
TOOL_KEYS = TOOL.keys
