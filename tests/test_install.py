"""A fresh install works: every import is declared, and the wheel runs from any directory.

The second test builds the wheel, installs it into a new virtual environment (no editable install, no
repository on sys.path) and, from an unrelated directory, runs the offline sample, the proxy with a
shipped policy named without a path, and mitmdump with the addon found through `failcore addon-path`.
"""

from __future__ import annotations

import ast
import http.server
import importlib.metadata
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.helpers import REPO, network_events, read_tape

RUNTIME_TREES = ("failcore", "addons")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = set()
    for requirement in project["dependencies"]:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, f"cannot read the requirement {requirement!r}"
        names.add(_normalise(match.group(1)))
    return names


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside `try: … except ImportError` (an alternative or optional import)."""
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.Try) and node in parent.body:
            for handler in parent.handlers:
                names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                if any(
                    isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names
                ):
                    return True
        node = parent
    return False


def third_party_imports() -> Iterator[tuple[str, int, str, bool]]:
    """(file, line, top-level module, guarded) for every import outside the stdlib and failcore."""
    for tree_name in RUNTIME_TREES:
        for path in sorted((REPO / tree_name).rglob("*.py")):
            tree = ast.parse(path.read_bytes(), str(path))
            parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    tops = [alias.name.split(".")[0] for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    tops = [node.module.split(".")[0]]
                else:
                    continue
                for top in tops:
                    if top in sys.stdlib_module_names or top in ("failcore", "__future__"):
                        continue
                    yield str(path.relative_to(REPO)), node.lineno, top, _guarded(node, parents)


def test_every_third_party_import_is_a_declared_dependency() -> None:
    declared = declared_distributions()
    providers = importlib.metadata.packages_distributions()
    problems = []
    for where, line, module, guarded in third_party_imports():
        dists = {_normalise(d) for d in providers.get(module, [])}
        if dists & declared:
            continue
        if guarded and not dists:
            continue  # an alternative for another interpreter (compression.zstd on Python >= 3.14)
        found = ", ".join(sorted(dists)) or "no installed distribution"
        problems.append(f"{where}:{line}: imports {module} ({found}), which pyproject.toml does not declare")
    assert not problems, "\n".join(problems)


def test_the_declared_import_check_catches_an_undeclared_module(monkeypatch) -> None:
    # The check above must be able to fail: httpx is installed (test extra) but not a runtime dependency.
    assert "httpx" not in declared_distributions()
    assert "httpx" in importlib.metadata.packages_distributions()


# --------------------------------------------------------------------------- the wheel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited early: {proc.stdout.read().decode() if proc.stdout else ''}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listened on {port} within {timeout}s")


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out.decode(errors="replace")


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"hello": "world"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from this checkout; returns its bin directory."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(root / "dist"), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    wheels = list((root / "dist").glob("failcore-*.whl"))
    assert len(wheels) == 1
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    pip = subprocess.run(
        [str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheels[0])],
        capture_output=True,
        timeout=900,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr.decode()[-3000:]
    return root / "venv" / "bin"


@dataclass
class Elsewhere:
    """The installed commands, run from a directory outside the checkout with a clean environment."""

    bin: Path
    cwd: Path

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "PYTHONPATH"}
        env.update(FAILCORE_HOME=str(self.cwd / "home"), COLUMNS="120")
        return env

    def run(self, command: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / command), *args],
            capture_output=True, text=True, cwd=self.cwd, env=self.env, timeout=timeout, check=False,
        )  # fmt: skip

    def start(self, command: str, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(self.bin / command), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env,
        )  # fmt: skip


@pytest.fixture
def elsewhere(installed: Path, tmp_path: Path) -> Elsewhere:
    return Elsewhere(installed, tmp_path)


def curl_via(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--proxy", f"http://127.0.0.1:{port}", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_installed_wheel_runs_the_sample_from_another_directory(elsewhere: Elsewhere, tmp_path) -> None:
    where = elsewhere.run("python", "-c", "import failcore; print(failcore.__file__)")
    assert str(REPO) not in where.stdout and "site-packages" in where.stdout
    tape = tmp_path / "tape"
    done = elsewhere.run("failcore", "sample", "--json", "--tape", str(tape))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = orjson.loads(done.stdout)["summary"]
    assert (summary["requests"], summary["blocked"], summary["failed"]) == (3, 1, 1)
    # The report's templates ship in the wheel.
    report = elsewhere.run("failcore", "report", "--last", "--bodies", "--json", "--tape", str(tape))
    assert report.returncode == 0, report.stderr[-3000:]
    page = (tmp_path / orjson.loads(report.stdout)["output"]).read_text()
    assert "Waterfall" in page and "Content-Security-Policy" in page
    listed = elsewhere.run("failcore", "policy", "list", "--json")
    names = orjson.loads(listed.stdout)["policies"]
    assert {"default", "strict", "examples/dlp", "examples/fail-closed"} <= set(names)
    checked = elsewhere.run("failcore", "policy", "check", "strict", "examples/dlp")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_installed_proxy_takes_a_shipped_policy_by_name(elsewhere: Elsewhere, tmp_path) -> None:
    port = _free_port()
    tape = tmp_path / "tape"
    proc = elsewhere.start(
        "failcore", "proxy", "--policy", "strict", "--port", str(port), "--tape", str(tape)
    )
    try:
        _wait_for_port(port, proc)
        # strict blocks every host it does not name: a plain request to loopback is refused.
        blocked = curl_via(port, "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:9/")
    finally:
        out = _stop(proc)
    assert "strict" in out and "Traceback" not in out, out
    assert blocked.stdout == "403", blocked.stdout + blocked.stderr
    events = network_events(read_tape(tape))
    assert [(e["decision"], e["status"]) for e in events] == [("BLOCK", 403)]


def test_installed_mitmdump_loads_the_addon_from_addon_path(elsewhere: Elsewhere, tmp_path) -> None:
    addon = elsewhere.run("failcore", "addon-path").stdout.strip()
    assert Path(addon).is_file() and str(REPO) not in addon, addon
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = _free_port()
    tape = tmp_path / "tape"
    proc = elsewhere.start(
        "mitmdump", "-q", "-s", addon, "--listen-port", str(port),
        "--set", f"failcore_tape={tape}", "--set", f"confdir={tmp_path / 'home'}",
    )  # fmt: skip
    try:
        _wait_for_port(port, proc)
        fetched = curl_via(port, f"http://127.0.0.1:{server.server_port}/")
    finally:
        out = _stop(proc)
        server.shutdown()
    assert fetched.stdout == '{"hello": "world"}', fetched.stderr + out
    events = network_events(read_tape(tape))
    assert [(e["method"], e["status"], e["outcome"]) for e in events] == [("GET", 200, "ok")]
    verify = elsewhere.run("failcore", "verify", str(tape))
    assert verify.returncode == 0, verify.stdout
