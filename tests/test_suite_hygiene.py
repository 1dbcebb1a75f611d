"""The test suite's own rules, checked on its source: one import style for shared code (helpers
modules, never conftest.py, never another test module), and pytest shows why a test was skipped."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in a file, including imports inside functions."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "." * node.level + (node.module or "")))
    return found


def forbidden(module: str) -> str | None:
    parts = module.split(".")
    if module.startswith("."):
        return "a relative import (write tests.<module>)"
    if parts[0] == "conftest" or (parts[0] == "tests" and "conftest" in parts):
        return "conftest.py holds fixtures only; import shared code from a helpers module"
    if parts[0] == "tests" and any(part.startswith("test_") for part in parts[1:]):
        return "another test module; move what both need into a helpers module"
    if parts[0].startswith("test_"):
        return "another test module (and not as tests.<module>)"
    return None


def violations(root: Path) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        if ".venv" in path.parts or "data" in path.relative_to(root).parts:
            continue
        reported: set[int] = set()
        for line, module in imported_modules(path):
            why = forbidden(module)
            if why is not None and line not in reported:
                reported.add(line)
                problems.append(f"{path.relative_to(root.parent)}:{line}: imports {module}: {why}")
    return problems


def test_no_test_imports_conftest_or_another_test_module() -> None:
    assert violations(TESTS) == []


@pytest.mark.parametrize(
    ("source", "offence"),
    [
        ("from tests.test_replay import OpenAiAgent\n", "another test module"),
        ("from tests.security.test_bind_address import free_port\n", "another test module"),
        ("import tests.test_cli\n", "another test module"),
        ("from test_replay import run_id\n", "another test module"),
        ("from conftest import read_tape\n", "conftest.py holds fixtures only"),
        ("from tests.conftest import read_tape\n", "conftest.py holds fixtures only"),
        ("def f():\n    from tests.test_tape import network_event\n", "another test module"),
        ("from .helpers import read_head\n", "a relative import"),
    ],
)
def test_the_check_catches_each_shape(tmp_path: Path, source: str, offence: str) -> None:
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_victim.py").write_text(source)
    (tests / "helpers.py").write_text("from tests.security.helpers import AWS_KEY_ID\n")
    [problem] = violations(tests)
    assert problem.startswith("tests/test_victim.py:") and offence in problem


def test_pytest_reports_skip_reasons() -> None:
    """A skipped security test must be visible: `-rs` prints every skip with its reason."""
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    flags = options["addopts"].split()
    assert any(flag.startswith("-r") and set(flag[2:]) & set("saA") for flag in flags), flags
