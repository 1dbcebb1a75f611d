"""The YAML policy: validate policy files and decide ALLOW / WARN / BLOCK for each request.

- `model`: the types and constants everyone imports (Policy, Rule, Decision, BudgetSpec, DlpSettings, …);
  cheap to import, no YAML.
- `load`: read a file, parse YAML with positions, report problems as `file:line:col: message`.
- `schema` (the declarative description of every section) walked by `validate` (one validator);
  `values` and `delegated` read single values and the fields other modules validate; `nodes` knows
  YAML positions.
- `glob`: path and model globs to RE2; `address`: host and IP spellings; `decide`: the hot path.
- `runtime` (+ `runtime_schema`): the fs, exec, network and tools checks of `failcore.run`/`guard`.

Besides the request rules, a policy carries the `budgets`, `dlp` and `prices` sections. They are only
validated and normalised here (custom DLP rules parsed, a gitleaks file imported, price overrides tried
against the price table); building the DLP engine and the price table is left to the caller, once per
policy load.

`from failcore.policy import X` keeps working for every public name; names are resolved lazily
(PEP 562), so importing `failcore.policy.model` alone does not load the YAML parser. Code inside
failcore imports from the submodule that defines a name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE: dict[str, str] = {
    "address": "canonical_ip is_non_global normalise_host",
    "decide": "connect_verdict tcp_verdict",
    "glob": "GlobError glob_to_regex model_glob_to_regex",
    "load": "check_policy load_policy parse_policy with_mode",
    "model": (
        "ACTIONS BUDGET_METRICS BUDGET_WINDOWS BUDGET_WINDOW_SECONDS COUNT_METRICS DEFAULT_DLP_SETTINGS "
        "DEFAULT_SOFT_FRACTION DLP_STREAM_MODES LLM_PROVIDERS MODES ON_EXCEED SCHEMES SUPPORTED_VERSION "
        "Action BudgetScope BudgetSpec BudgetWindow Decision DlpSettings DlpStreamMode HostPattern Mode "
        "OnExceed PathPattern Policy PolicyError PolicyProblem Rule"
    ),
    "contracts": "ToolContract check_output",
    "runtime": "ExecRules FsRules NetRules Verdict check_connect check_exec check_fs",
    "schema": ("BUDGET_KEYS BUDGET_SCOPE_KEYS DLP_KEYS DLP_SCAN_KEYS NETWORK_KEYS RULE_KEYS TOP_LEVEL_KEYS"),
}
# Imported eagerly (it is light: model and address only) because importing the submodule `decide` sets the
# package attribute of that name to the module; binding the function here afterwards keeps
# `from failcore.policy import decide` the function.
from failcore.policy.decide import decide  # noqa: E402

_MODULE_OF: dict[str, str] = {name: module for module, names in _WHERE.items() for name in names.split()}

__all__ = [
    "ACTIONS",
    "BUDGET_KEYS",
    "BUDGET_METRICS",
    "BUDGET_SCOPE_KEYS",
    "BUDGET_WINDOWS",
    "BUDGET_WINDOW_SECONDS",
    "COUNT_METRICS",
    "DEFAULT_DLP_SETTINGS",
    "DEFAULT_SOFT_FRACTION",
    "DLP_KEYS",
    "DLP_SCAN_KEYS",
    "DLP_STREAM_MODES",
    "LLM_PROVIDERS",
    "MODES",
    "NETWORK_KEYS",
    "ON_EXCEED",
    "RULE_KEYS",
    "SCHEMES",
    "SUPPORTED_VERSION",
    "TOP_LEVEL_KEYS",
    "Action",
    "BudgetScope",
    "BudgetSpec",
    "BudgetWindow",
    "Decision",
    "DlpSettings",
    "DlpStreamMode",
    "ExecRules",
    "FsRules",
    "GlobError",
    "HostPattern",
    "Mode",
    "NetRules",
    "OnExceed",
    "PathPattern",
    "Policy",
    "PolicyError",
    "PolicyProblem",
    "Rule",
    "ToolContract",
    "Verdict",
    "canonical_ip",
    "check_connect",
    "check_exec",
    "check_fs",
    "check_output",
    "check_policy",
    "connect_verdict",
    "decide",
    "glob_to_regex",
    "is_non_global",
    "load_policy",
    "model_glob_to_regex",
    "normalise_host",
    "parse_policy",
    "tcp_verdict",
    "with_mode",
]


def __getattr__(name: str) -> object:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from failcore.policy.address import canonical_ip, is_non_global, normalise_host
    from failcore.policy.contracts import ToolContract, check_output
    from failcore.policy.decide import connect_verdict, tcp_verdict
    from failcore.policy.glob import GlobError, glob_to_regex, model_glob_to_regex
    from failcore.policy.load import check_policy, load_policy, parse_policy, with_mode
    from failcore.policy.model import (
        ACTIONS,
        BUDGET_METRICS,
        BUDGET_WINDOW_SECONDS,
        BUDGET_WINDOWS,
        COUNT_METRICS,
        DEFAULT_DLP_SETTINGS,
        DEFAULT_SOFT_FRACTION,
        DLP_STREAM_MODES,
        LLM_PROVIDERS,
        MODES,
        ON_EXCEED,
        SCHEMES,
        SUPPORTED_VERSION,
        Action,
        BudgetScope,
        BudgetSpec,
        BudgetWindow,
        Decision,
        DlpSettings,
        DlpStreamMode,
        HostPattern,
        Mode,
        OnExceed,
        PathPattern,
        Policy,
        PolicyError,
        PolicyProblem,
        Rule,
    )
    from failcore.policy.runtime import (
        ExecRules,
        FsRules,
        NetRules,
        Verdict,
        check_connect,
        check_exec,
        check_fs,
    )
    from failcore.policy.schema import (
        BUDGET_KEYS,
        BUDGET_SCOPE_KEYS,
        DLP_KEYS,
        DLP_SCAN_KEYS,
        NETWORK_KEYS,
        RULE_KEYS,
        TOP_LEVEL_KEYS,
    )
