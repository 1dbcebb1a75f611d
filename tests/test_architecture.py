"""The shape of the package, checked: no import cycles, modules of one job, light imports for pure tools.

Issue 11 asked for rooms a newcomer can find their way in; these tests keep them that way. Each check
reads the source with `ast` (nothing is imported except in the subprocess checks), so a failure names
the module and the line to look at.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "failcore"
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _top_level_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of failcore this module imports when it is imported (not inside functions, not under
    TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    is_package = path.name == "__init__.py"

    def visit(stmts: list[ast.stmt]) -> None:
        for stmt in stmts:
            if isinstance(stmt, ast.Import):
                for alias in stmt.names:
                    if alias.name.startswith("failcore"):
                        found.add(alias.name)
            elif isinstance(stmt, ast.ImportFrom):
                target = _resolve(name, is_package, stmt)
                if not target.startswith("failcore"):
                    continue
                for alias in stmt.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in known else target)
            elif isinstance(stmt, ast.If):
                test = stmt.test
                if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                    visit(stmt.orelse)
                    continue
                if isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING":
                    visit(stmt.orelse)
                    continue
                visit(stmt.body)
                visit(stmt.orelse)
            elif isinstance(stmt, ast.Try):
                visit(stmt.body)
                for handler in stmt.handlers:
                    visit(handler.body)
                visit(stmt.orelse)
                visit(stmt.finalbody)
            elif isinstance(stmt, (ast.With,)):
                visit(stmt.body)

    visit(tree.body)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = _top_level_imports(path, name, known)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def strong(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles_between_modules() -> None:
    cycles = _cycles(_graph())
    listed = "\n".join(" <-> ".join(c) for c in cycles)
    assert cycles == [], f"import cycles (module-level imports):\n{listed}"


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


def test_long_modules_say_why_they_are_long() -> None:
    offenders = []
    for name, path in _modules().items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and "Size:" not in _docstring(path):
            offenders.append(f"{name} ({lines} lines)")
    assert offenders == [], (
        f"modules over {MAX_LINES} lines without a 'Size:' reason in their docstring: " + ", ".join(offenders)
    )


@pytest.mark.parametrize("module", ["failcore.diff", "failcore.tape", "failcore.policy", "failcore.views"])
def test_pure_modules_do_not_load_the_proxy(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in ('mitmproxy', 'hyperscan', 'textual') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", f"import {module} loaded {out.stdout.strip()}"
