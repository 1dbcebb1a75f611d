"""The policy package's shape: the schema and README's field table agree, the old import surface still
works, the model imports without the parser, and the package has no import cycles."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import failcore.policy
from failcore.policy import schema

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = REPO_ROOT / "failcore" / "policy"

# Every public name `from failcore.policy import X` offered before the package split (policy.py).
OLD_PUBLIC_NAMES = [
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
    "GlobError",
    "HostPattern",
    "Mode",
    "OnExceed",
    "PathPattern",
    "Policy",
    "PolicyError",
    "PolicyProblem",
    "Rule",
    "canonical_ip",
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


def readme_policy_fields() -> set[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Policy\n", 1)[1].split("\n## ", 1)[0]
    table = section.split("| field | type | default | meaning |", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", table, flags=re.MULTILINE))


def test_every_schema_field_has_a_readme_row_and_every_row_a_field() -> None:
    documented = set(schema.documented_fields())
    rows = readme_policy_fields()
    assert documented - rows == set(), "fields missing from README's policy table"
    assert rows - documented == set(), "README's policy table lists fields the schema does not have"
    assert {"rules[].path", "budgets[].limits", "dlp.unscannable", "network.block_private_resolved"} <= rows


def test_allowed_keys_follow_the_documented_order() -> None:
    assert schema.TOP_LEVEL_KEYS[:3] == ("version", "description", "mode")
    assert schema.RULE_KEYS == ("id", "host", "port", "scheme", "method", "path", "action", "reason")
    assert schema.BUDGET_SCOPE_KEYS == ("host", "provider", "model")
    assert schema.DLP_SCAN_KEYS == ("request", "response")


def test_every_old_public_name_still_imports_from_the_package() -> None:
    for name in OLD_PUBLIC_NAMES:
        value = getattr(failcore.policy, name)
        assert not isinstance(value, type(failcore.policy)), name
    assert set(OLD_PUBLIC_NAMES) <= set(failcore.policy.__all__)
    assert callable(failcore.policy.decide)


def test_the_model_and_budget_import_without_the_parser() -> None:
    code = (
        "import sys, failcore.budget, failcore.policy.model\n"
        "heavy = ['ruamel.yaml', 're2', 'failcore.policy.load', 'failcore.dlp', 'failcore.llm']\n"
        "print(','.join(name for name in heavy if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def _imports_within_package(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("failcore.policy."):
                modules.add(node.module.rsplit(".", 1)[1])
            elif node.module == "failcore.policy":
                modules.update(alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").exists())
    return modules


def test_no_import_cycles_and_no_oversized_module() -> None:
    graph = {
        path.stem: _imports_within_package(path) for path in PACKAGE.glob("*.py") if path.stem != "__init__"
    }
    done: set[str] = set()

    def visit(module: str, stack: tuple[str, ...]) -> None:
        assert module not in stack, f"import cycle: {' -> '.join((*stack, module))}"
        if module in done:
            return
        for imported in graph.get(module, ()):
            visit(imported, (*stack, module))
        done.add(module)

    for module in graph:
        visit(module, ())
    for path in PACKAGE.glob("*.py"):
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 500, path.name
