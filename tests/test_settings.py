"""failcore.proxy.settings: one addon owns every failcore_* option (declares, checks, publishes).

Through mitmproxy's taddons harness, as mitmproxy tests its own addons; plus source checks that no other
module under failcore/proxy reads or declares a failcore_* option, and that failcore.proxy and
failcore.evidence have no import cycles.
"""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow, tutils

from failcore.proxy import FailCore
from failcore.proxy.session import Session
from failcore.proxy.settings import OPTION_NAMES, AddonSettings, Settings
from failcore.runner import ProxyStartError

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "failcore"

# Every failcore option with its default, as the addons declared them before one addon owned them all
# (written out here, not read from failcore.proxy.settings).
DEFAULTS = {
    "failcore_policy": "",
    "failcore_mode": "",
    "failcore_policy_poll_ms": 1000,
    "failcore_hold_max": 64 << 20,
    "failcore_state_dir": "",
    "failcore_stream_threshold": 1 << 20,
    "failcore_body_cap": 1 << 20,
    "failcore_llm_body_max": 64 << 20,
    "failcore_tape": "",
    "failcore_run_id": "",
    "failcore_queue_size": 4096,
    "failcore_segment_mb": 64,
    "failcore_segment_seconds": 0,
    "failcore_checkpoint_every": 1000,
    "failcore_tape_reserve_mb": 16,
    "failcore_raw_tcp": "allow",
    "failcore_replay": "",
    "failcore_replay_on_miss": "live",
    "failcore_replay_pace": "fast",
    "failcore_replay_override": [],
    "failcore_replay_ignore": [],
    "failcore_gc_freeze": True,
}


def failcore_options(options: Any) -> set[str]:
    return {name for name in options.keys() if name.startswith("failcore_")}  # noqa: SIM118 (not a dict)


class Holder:
    settings: AddonSettings | None = None


def test_declares_every_option_with_its_default_and_publishes_them() -> None:
    holder = Holder()
    addon = Settings(holder)
    with taddons.context(addon) as tctx:
        tctx.configure(addon)
        declared = {name: getattr(tctx.options, name) for name in failcore_options(tctx.options)}
        assert declared == DEFAULTS
        published = holder.settings
        assert published is not None
        assert {
            f"failcore_{f.name}": getattr(published, f.name)
            for f in dataclasses.fields(published)
            if f.name != "confdir"
        } == {name: tuple(v) if isinstance(v, list) else v for name, v in DEFAULTS.items()}
        assert published.confdir == tctx.options.confdir
        # A session's settings before any configure are the same defaults.
        assert Session().settings == published


def test_a_change_is_published_as_a_new_frozen_snapshot() -> None:
    holder = Holder()
    addon = Settings(holder)
    with taddons.context(addon) as tctx:
        tctx.configure(addon)
        before = holder.settings
        tctx.configure(addon, failcore_body_cap=4096, failcore_mode="enforce", failcore_raw_tcp="block")
        after = holder.settings
        assert after is not before and before is not None and after is not None
        assert (after.body_cap, after.mode, after.raw_tcp) == (4096, "enforce", "block")
        assert before.body_cap == 1 << 20  # the old snapshot is untouched
        with pytest.raises(dataclasses.FrozenInstanceError):
            after.body_cap = 1  # type: ignore[misc]


BAD_VALUES = [
    ("failcore_mode", "enforcing", "failcore_mode must be observe or enforce, not 'enforcing'"),
    ("failcore_raw_tcp", "drop", "failcore_raw_tcp must be one of allow, block, not 'drop'"),
    ("failcore_policy_poll_ms", -1, "failcore_policy_poll_ms must be >= 0"),
    ("failcore_hold_max", -1, "failcore_hold_max must be >= 0"),
    ("failcore_stream_threshold", -1, "failcore_stream_threshold must be >= 0"),
    ("failcore_body_cap", -1, "failcore_body_cap must be >= 0"),
    ("failcore_llm_body_max", -1, "failcore_llm_body_max must be >= 0"),
    ("failcore_queue_size", 0, "failcore_queue_size must be >= 1"),
    ("failcore_segment_mb", 0, "failcore_segment_mb must be >= 1"),
    ("failcore_checkpoint_every", 0, "failcore_checkpoint_every must be >= 1"),
    ("failcore_segment_seconds", -1, "failcore_segment_seconds must be >= 0"),
    ("failcore_tape_reserve_mb", -1, "failcore_tape_reserve_mb must be >= 0"),
]


@pytest.mark.parametrize(("option", "value", "message"), BAD_VALUES)
def test_a_bad_value_is_refused_with_a_clear_error_and_the_last_good_settings_stay(
    option: str, value: object, message: str
) -> None:
    holder = Holder()
    addon = Settings(holder)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, failcore_state_dir="/var/lib/x")
        good = holder.settings
        assert good is not None and good.state_dir == "/var/lib/x"
        with pytest.raises(exceptions.OptionsError) as raised:
            tctx.configure(addon, **{option: value})
        assert str(raised.value) == message
        assert getattr(tctx.options, option) == DEFAULTS[option]  # rolled back
        assert holder.settings == good


@pytest.mark.parametrize(("option", "value", "message"), BAD_VALUES)
def test_failcore_refuses_a_bad_value_with_the_error_it_always_gave(
    option: str, value: object, message: str
) -> None:
    """The same messages the concerns gave when each checked its own options (this test passes on that
    code too): behaviour unchanged for whoever sets an option."""
    addon = FailCore()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError) as raised:
            tctx.configure(addon, **{option: value})
        assert str(raised.value) == message


def test_a_proxy_started_with_a_bad_value_says_which_and_does_not_start(start_proxy) -> None:
    with pytest.raises(ProxyStartError) as info:
        start_proxy(sets=["failcore_body_cap=-1"])
    assert str(info.value) == "failcore_body_cap must be >= 0"


def test_the_edge_values_are_accepted() -> None:
    holder = Holder()
    addon = Settings(holder)
    with taddons.context(addon) as tctx:
        tctx.configure(
            addon,
            failcore_body_cap=0,
            failcore_queue_size=1,
            failcore_segment_seconds=0,
            failcore_mode="observe",
            failcore_raw_tcp="allow",
        )
        assert holder.settings is not None and holder.settings.body_cap == 0


def test_failcore_publishes_the_settings_every_concern_reads() -> None:
    """One owner, many readers: failcore_body_cap set once reaches the stream tap's copy of a body."""
    addon = FailCore()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, failcore_body_cap=777, failcore_stream_threshold=10)
        assert addon.session.settings.body_cap == 777
        flow = tflow.tflow(resp=tutils.tresp(headers=((b"content-type", b"text/event-stream"),)))
        addon.streamtap.responseheaders(flow)
        tap = addon.session.flows[flow.id].response_tap
        assert tap is not None and tap.cap == 777
        with pytest.raises(exceptions.OptionsError, match="failcore_body_cap must be >= 0"):
            tctx.configure(addon, failcore_body_cap=-5)
        assert addon.session.settings.body_cap == 777


def test_failcore_declares_each_option_once_through_settings() -> None:
    addon = FailCore()
    with taddons.context(addon) as tctx:
        declared = failcore_options(tctx.options)
        assert set(declared) == set(DEFAULTS) == OPTION_NAMES


# ----------------------------------------------------------------------------- source checks


def option_reads(source: str) -> list[str]:
    """Where a module reads or declares a failcore_* option: an attribute `….failcore_x` (ctx.options
    or an alias of it), getattr(…, "failcore_x") or add_option("failcore_x", …)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("failcore_"):
            found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Call) and node.args:
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            first = node.args[1] if name == "getattr" and len(node.args) > 1 else node.args[0]
            if (
                name in ("getattr", "add_option")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and first.value.startswith("failcore_")
            ):
                found.append(f"{node.lineno}: {name}({first.value!r})")
    return found


def test_the_source_check_finds_option_reads() -> None:
    source = (
        "from mitmproxy import ctx\n"
        "a = ctx.options.failcore_body_cap\n"
        "o = ctx.options\n"
        "b = o.failcore_mode\n"
        "c = getattr(ctx.options, 'failcore_tape')\n"
        "def load(loader):\n"
        "    loader.add_option('failcore_x', int, 1, 'h')\n"
        "d = flow.metadata.get('failcore_held')\n"
    )
    assert option_reads(source) == [
        "2: .failcore_body_cap",
        "4: .failcore_mode",
        "5: getattr('failcore_tape')",
        "7: add_option('failcore_x')",
    ]


def test_no_proxy_module_but_settings_reads_or_declares_a_failcore_option() -> None:
    offenders = {
        str(path.relative_to(REPO)): hits
        for path in sorted((PACKAGE / "proxy").rglob("*.py"))
        if path.name != "settings.py" and (hits := option_reads(path.read_text()))
    }
    assert offenders == {}, "read session.settings (failcore.proxy.settings) instead"


def _imports(path: Path, module: str) -> set[str]:
    """The failcore modules a module imports, wherever in it (a function-local import still makes a
    cycle), except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for n in ast.walk(node)
    }
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m.startswith("failcore")}


def import_graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return {
        name: {m for m in _imports(path, name) if m in modules and m != name}
        for name, path in modules.items()
    }


def cycles_through(graph: dict[str, set[str]], prefixes: tuple[str, ...]) -> list[list[str]]:
    """Import cycles that pass through a module named by one of `prefixes` (through any others too)."""
    found = []
    for start in sorted(m for m in graph if m.startswith(prefixes)):
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    found.append([*path, start])
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    return found


def test_the_cycle_finder_finds_a_function_local_cycle() -> None:
    graph = {"failcore.proxy.a": {"failcore.proxy.b"}, "failcore.proxy.b": {"failcore.proxy.a"}}
    assert cycles_through(graph, ("failcore.proxy",))[0] == [
        "failcore.proxy.a",
        "failcore.proxy.b",
        "failcore.proxy.a",
    ]


def test_proxy_and_evidence_modules_import_no_cycle() -> None:
    cycles = cycles_through(import_graph(), ("failcore.proxy", "failcore.evidence"))
    assert cycles == []


def test_evidence_does_not_load_the_proxy() -> None:
    """Evidence building is a lower layer: importing it loads no addon (and so no proxy machinery)."""
    code = (
        "import sys, failcore.evidence.exchange, failcore.evidence.dlp, failcore.evidence.backlog\n"
        "print(sorted(m for m in sys.modules if m.startswith('failcore.proxy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_proxy_and_evidence_modules_stay_under_500_lines() -> None:
    long = {
        str(p.relative_to(REPO)): n
        for folder in ("proxy", "evidence")
        for p in sorted((PACKAGE / folder).rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert long == {}
