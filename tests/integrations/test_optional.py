"""failcore does not need the agent frameworks: importing the integrations loads neither, and wrapping a
tool without its framework installed says which package to install (no backtrace from deep inside)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )


def test_importing_the_integrations_loads_no_framework() -> None:
    done = python(
        "import sys, failcore.integrations.langchain, failcore.integrations.openai_agents\n"
        "print(sorted(m for m in ('langchain_core', 'agents', 'openai') if m in sys.modules))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_wrapping_without_the_framework_names_the_package_to_install() -> None:
    done = python(
        "import sys\n"
        "sys.modules['langchain_core'] = sys.modules['agents'] = None  # as if not installed\n"
        "from failcore.integrations.langchain import guard_tool\n"
        "from failcore.integrations.openai_agents import guard_function_tool\n"
        "for wrap in (guard_tool, guard_function_tool):\n"
        "    try:\n"
        "        wrap(object())\n"
        "    except ModuleNotFoundError as e:\n"
        "        print(e)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "langchain-core is not installed: pip install 'failcore[integrations]' (or langchain-core)",
        "openai-agents is not installed: pip install 'failcore[integrations]' (or openai-agents)",
    ]
