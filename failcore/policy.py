"""YAML policy engine: validate policy files and decide ALLOW / WARN / BLOCK for each request.

Everything that can be computed at load time is (lower-cased sets, globs compiled to RE2 regexes,
ready-made Decision objects), so `decide` only does set lookups and at most one regex match per rule.
Path and model globs use RE2 because request paths and model names come from the agent and must not be
able to trigger catastrophic backtracking.

Besides the request rules, a policy carries the `budgets`, `dlp` and `prices` sections. They are only
validated and normalised here (custom DLP rules parsed, a gitleaks file imported, price overrides tried
against the price table); building the DLP engine and the price table is left to the caller, once per
policy load.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Protocol

import re2
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from failcore.dlp import builtin_rules, import_gitleaks, parse_custom_rules
from failcore.dlp.model import SEVERITIES, DlpRule
from failcore.llm.prices import load_price_table
from failcore.shipped import BUNDLED_GITLEAKS

Action = Literal["ALLOW", "WARN", "BLOCK"]
Mode = Literal["observe", "enforce"]

ACTIONS: tuple[Action, ...] = ("ALLOW", "WARN", "BLOCK")
MODES: tuple[Mode, ...] = ("observe", "enforce")
# tcp: raw (non-HTTP) bytes through a CONNECT tunnel (see tcp_verdict).
SCHEMES: tuple[str, ...] = ("http", "https", "ws", "wss", "tcp")
SUPPORTED_VERSION = 1

BudgetWindow = Literal["run", "minute", "hour", "day"]
OnExceed = Literal["block", "cut_stream"]
DlpStreamMode = Literal["side", "strict"]

TOP_LEVEL_KEYS: tuple[str, ...] = (
    "version",
    "description",
    "mode",
    "default",
    "fail_open",
    "redact_headers",
    "rules",
    "budgets",
    "dlp",
    "prices",
    "network",
)
NETWORK_KEYS: tuple[str, ...] = ("block_private_resolved",)
RULE_KEYS: tuple[str, ...] = ("id", "host", "port", "scheme", "method", "path", "action", "reason")

BUDGET_KEYS: tuple[str, ...] = ("id", "window", "scope", "limits", "soft", "on_exceed")
BUDGET_SCOPE_KEYS: tuple[str, ...] = ("host", "provider", "model")
# None: the window is the run itself; otherwise the length of the rolling window in seconds.
BUDGET_WINDOW_SECONDS: Mapping[str, int | None] = MappingProxyType(
    {"run": None, "minute": 60, "hour": 3600, "day": 86400}
)
BUDGET_WINDOWS: tuple[BudgetWindow, ...] = ("run", "minute", "hour", "day")
COUNT_METRICS: tuple[str, ...] = ("requests", "input_tokens", "output_tokens", "total_tokens", "tool_calls")
BUDGET_METRICS: tuple[str, ...] = (*COUNT_METRICS, "cost_usd", "wall_seconds")
ON_EXCEED: tuple[OnExceed, ...] = ("block", "cut_stream")
DEFAULT_SOFT_FRACTION = 0.8
# Provider names exactly as failcore.llm.detect_api reports them.
LLM_PROVIDERS: tuple[str, ...] = (
    "openai",
    "azure_openai",
    "openai_compatible",
    "anthropic",
    "anthropic_compatible",
    "gemini",
    "ollama",
    "openrouter",
    "together",
    "groq",
    "mistral",
    "deepseek",
    "xai",
    "fireworks",
)

DLP_KEYS: tuple[str, ...] = (
    "enabled",
    "stream",
    "default_action",
    "severity_actions",
    "rule_actions",
    "scan",
    "import_gitleaks",
    "custom",
    "unscannable",
)
DLP_SCAN_KEYS: tuple[str, ...] = ("request", "response")
DLP_STREAM_MODES: tuple[DlpStreamMode, ...] = ("side", "strict")


# A CONNECT tunnel is treated as carrying https when judging rules that constrain the scheme.
_TUNNEL_SCHEME = "https"
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_METHOD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")
_HOST_NAME = re.compile(r"[a-z0-9_\-]+(\.[a-z0-9_\-]+)*")
_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_GLOB_CHARS = frozenset("*?[")

Position = tuple[int, int]


# --------------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One problem in a policy file; line and column are 1-based (0 when there is no position)."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class PolicyError(Exception):
    """A policy could not be loaded; `problems` lists every problem found in one pass."""

    def __init__(self, problems: Iterable[PolicyProblem]) -> None:
        self.problems: list[PolicyProblem] = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


class _FullMatcher(Protocol):
    def fullmatch(self, text: str) -> object | None: ...


@dataclass(frozen=True, slots=True)
class HostPattern:
    """Exact host names plus `*.domain` wildcards stored as ".domain" suffixes (the apex never matches)."""

    exact: frozenset[str]
    suffixes: tuple[str, ...]

    def matches(self, host: str) -> bool:
        return host in self.exact or host.endswith(self.suffixes)


@dataclass(frozen=True, slots=True)
class PathPattern:
    """Literal path prefixes plus globs folded into one RE2 regex matched against the whole path."""

    prefixes: tuple[str, ...]
    globs: tuple[str, ...]
    regex: _FullMatcher | None = field(compare=False)

    def matches(self, path: str) -> bool:
        if path.startswith(self.prefixes):
            return True
        return self.regex is not None and self.regex.fullmatch(path) is not None


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy rule; a `None` matcher means the field was omitted (or "*") and matches anything."""

    id: str
    action: Action
    reason: str | None
    hosts: HostPattern | None
    ports: frozenset[int] | None
    schemes: frozenset[str] | None
    methods: frozenset[str] | None
    paths: PathPattern | None
    line: int

    def matches_endpoint(self, host: str, port: int) -> bool:
        if self.ports is not None and port not in self.ports:
            return False
        return self.hosts is None or self.hosts.matches(host)

    def matches_request(self, host: str, port: int, scheme: str, method: str, path: str) -> bool:
        """All arguments must already be normalised (see `decide`)."""
        if self.ports is not None and port not in self.ports:
            return False
        if self.schemes is not None and scheme not in self.schemes:
            return False
        if self.methods is not None and method not in self.methods:
            return False
        if self.hosts is not None and not self.hosts.matches(host):
            return False
        return self.paths is None or self.paths.matches(path)

    @property
    def constrains_request_line(self) -> bool:
        return self.methods is not None or self.paths is not None


@dataclass(frozen=True, slots=True)
class Decision:
    decision: Action
    rule: str | None
    reason: str | None
    would_block: bool
    matched_action: Action


@dataclass(frozen=True, slots=True)
class BudgetScope:
    """Which LLM calls a budget counts; a `None` field was omitted (or "*") and matches anything.

    A budget scoped to a provider or model never counts a call whose provider or model is unknown.
    """

    hosts: HostPattern | None = None
    providers: frozenset[str] | None = None
    model_globs: tuple[str, ...] | None = None
    model_regex: _FullMatcher | None = field(default=None, compare=False)

    def matches(self, *, host: str, provider: str | None, model: str | None) -> bool:
        if self.hosts is not None and not self.hosts.matches(_normalise_host(host)):
            return False
        if self.providers is not None and (provider is None or provider.lower() not in self.providers):
            return False
        if self.model_regex is None:
            return True
        return model is not None and self.model_regex.fullmatch(model.lower()) is not None


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """One budget: hard `limits` per metric over a `window`; WARN from `soft` x limit onwards.

    Count metrics (requests, *_tokens, tool_calls) have int limits; cost_usd and wall_seconds may be
    fractional.
    """

    id: str
    window: BudgetWindow
    limits: Mapping[str, float] = field(hash=False)
    scope: BudgetScope = BudgetScope()
    soft: float = DEFAULT_SOFT_FRACTION
    on_exceed: OnExceed = "block"
    line: int = 0

    @property
    def window_seconds(self) -> int | None:
        return BUDGET_WINDOW_SECONDS[self.window]


_NO_ACTIONS: Mapping[str, Action] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class DlpSettings:
    """The `dlp` section, validated. `declared` tells whether the policy had a `dlp` section at all."""

    enabled: bool = True
    declared: bool = False
    stream: DlpStreamMode = "side"
    default_action: Action = "WARN"
    severity_actions: Mapping[str, Action] = field(default=_NO_ACTIONS, hash=False)
    rule_actions: Mapping[str, Action] = field(default=_NO_ACTIONS, hash=False)
    scan_request: bool = True
    scan_response: bool = True
    gitleaks_path: Path | None = None
    gitleaks_rules: tuple[DlpRule, ...] = ()
    gitleaks_skipped: tuple[tuple[str, str], ...] = ()
    custom_rules: tuple[DlpRule, ...] = ()
    # What a request body that cannot be scanned whole (it decodes past the decode limit) gets when
    # the policy can BLOCK on a hit: refused (BLOCK) or forwarded with a warning (WARN).
    unscannable: Action = "BLOCK"

    def action_for(self, rule_id: str, severity: str) -> Action:
        """A rule's own action wins over its severity's, which wins over the default."""
        action = self.rule_actions.get(rule_id)
        if action is not None:
            return action
        return self.severity_actions.get(severity, self.default_action)


# What a policy without a `dlp` section gets: built-in rules, every hit recorded as WARN, nothing blocked.
DEFAULT_DLP_SETTINGS = DlpSettings()


@dataclass(frozen=True, slots=True)
class Policy:
    source: str
    mode: Mode
    default: Action
    fail_open: bool
    redact_headers: frozenset[str]
    rules: tuple[Rule, ...]
    sha256: str
    description: str | None = None
    budgets: tuple[BudgetSpec, ...] = ()
    dlp: DlpSettings = DEFAULT_DLP_SETTINGS
    # Raw `prices` overrides, validated; pass to failcore.llm.load_price_table(overrides=...).
    prices: dict[str, object] = field(default_factory=dict, hash=False)
    # network.block_private_resolved: refuse a name that resolves to a non-global address (private,
    # loopback, link-local such as the 169.254.169.254 metadata service, CGNAT, reserved).
    block_private_resolved: bool = False
    # Decisions depend only on (rule, mode), so they are built once here instead of on every request.
    _decision_table: tuple[tuple[Rule, Decision], ...] = field(init=False, repr=False, compare=False)
    _default_decision: Decision = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        table = tuple((rule, _rule_decision(rule, self.mode)) for rule in self.rules)
        object.__setattr__(self, "_decision_table", table)
        default_reason = f"no rule matched; default action {self.default}"
        default_decision = _make_decision(self.default, self.mode, None, default_reason)
        object.__setattr__(self, "_default_decision", default_decision)


def _rule_decision(rule: Rule, mode: Mode) -> Decision:
    return _make_decision(rule.action, mode, rule.id, rule.reason or f"matched rule '{rule.id}'")


def _make_decision(action: Action, mode: Mode, rule_id: str | None, reason: str | None) -> Decision:
    blocks = action == "BLOCK"
    if blocks and mode == "observe":
        return Decision("WARN", rule_id, reason, True, action)
    return Decision(action, rule_id, reason, blocks, action)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def parse_policy(
    text: str, source: str = "<policy>", *, base_dir: str | os.PathLike[str] | None = None
) -> Policy:
    """`base_dir` anchors relative paths inside the policy (import_gitleaks); by default the directory of
    `source`, or the working directory when `source` is not a path (such as "<policy>")."""
    if base_dir is None:
        base_dir = Path.cwd() if source.startswith("<") else Path(source).parent
    return _parse(text, source, hashlib.sha256(text.encode("utf-8")).hexdigest(), Path(base_dir))


def load_policy(path: str | os.PathLike[str]) -> Policy:
    source = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = "" if os.sep in source else " (nor a shipped policy's name: `failcore policy list` shows them)"
        raise PolicyError([PolicyProblem(source, 0, 0, f"cannot read policy file: {reason}{hint}")]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        message = f"the file is not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the policy as UTF-8 text"
        raise PolicyError([PolicyProblem(source, line, column, message)]) from None
    return _parse(text, source, hashlib.sha256(data).hexdigest(), Path(path).parent)


def check_policy(path: str | os.PathLike[str]) -> list[PolicyProblem]:
    try:
        load_policy(path)
    except PolicyError as exc:
        return exc.problems
    return []


def with_mode(policy: Policy, mode: str | None) -> Policy:
    if mode is None:
        return policy
    normalised = mode.strip().lower()
    if normalised not in MODES:
        raise ValueError(f"invalid policy mode {mode!r}: use 'observe' (log only) or 'enforce' (block)")
    if normalised == policy.mode:
        return policy
    return dataclasses.replace(policy, mode=normalised)


def _parse(text: str, source: str, digest: str, base_dir: Path) -> Policy:
    problems = _Problems(source)
    document = _load_yaml(text, problems)
    if problems:
        raise PolicyError(problems.items)
    if not isinstance(document, CommentedMap):
        position = _node_pos(document) if isinstance(document, CommentedSeq) else (1, 1)
        got = "an empty file" if document is None else _describe(document)
        problems.add(position, f"a policy must be a mapping of settings such as 'mode: observe'; got {got}")
        raise PolicyError(problems.items)
    policy = _PolicyReader(document, problems, base_dir).read(source, digest)
    if problems or policy is None:
        raise PolicyError(sorted(problems.items, key=lambda problem: (problem.line, problem.column)))
    return policy


def _load_yaml(text: str, problems: _Problems) -> object:
    yaml = YAML(typ="rt", pure=True)
    try:
        return yaml.load(text)
    except DuplicateKeyError as exc:
        mark = exc.problem_mark
        position = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problems.add(position, f"YAML error: {exc.problem}; each key may appear only once in a mapping")
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        position = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        detail = "; ".join(part for part in (exc.context, exc.problem) if part)
        problems.add(position, f"YAML syntax error: {detail}")
    except YAMLError as exc:
        problems.add((1, 1), f"YAML error: {exc}")
    return None


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[PolicyProblem] = []

    def add(self, position: Position, message: str) -> None:
        self.items.append(PolicyProblem(self.source, position[0], position[1], message))

    def __len__(self) -> int:
        return len(self.items)


def _key_pos(mapping: CommentedMap, key: object) -> Position:
    line, column = mapping.lc.key(key)
    return line + 1, column + 1


def _value_pos(mapping: CommentedMap, key: object) -> Position:
    # ruamel reports an empty value at the start of whatever follows it, which misleads; use the key.
    if mapping[key] is None:
        return _key_pos(mapping, key)
    line, column = mapping.lc.value(key)
    return line + 1, column + 1


def _item_pos(sequence: CommentedSeq, index: int) -> Position:
    line, column = sequence.lc.item(index)
    return line + 1, column + 1


def _node_pos(node: CommentedMap | CommentedSeq) -> Position:
    return node.lc.line + 1, node.lc.col + 1


def _quote(text: str, limit: int = 60) -> str:
    clipped = text if len(text) <= limit else text[:limit] + "..."
    return json.dumps(clipped, ensure_ascii=False)


def _is_bool(value: object) -> bool:
    return isinstance(value, (bool, ScalarBoolean))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not _is_bool(value)


def _describe(value: object) -> str:
    if value is None:
        return "an empty value"
    if _is_bool(value):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {_quote(value)}"
    if isinstance(value, CommentedSeq):
        return "a list"
    if isinstance(value, CommentedMap):
        return "a mapping"
    if isinstance(value, TaggedScalar):
        return f"a value tagged {value.tag}"
    return f"a {type(value).__name__} value"


def _unknown_key_message(key: str, allowed: tuple[str, ...], where: str) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f' Did you mean "{close[0]}"?' if close else ""
    return f"unknown key {_quote(key)} {where}.{hint} Allowed keys: {', '.join(allowed)}"


def _parse_action(value: object) -> Action | None:
    if isinstance(value, str):
        upper = value.strip().upper()
        for action in ACTIONS:
            if action == upper:
                return action
    return None


def _report_unknown_keys(
    node: CommentedMap, allowed: tuple[str, ...], where: str, add: Callable[[Position, str], None], what: str
) -> None:
    """One problem per key that is not text or not among `allowed` (with a did-you-mean hint)."""
    for key in node:
        position = _key_pos(node, key)
        if not isinstance(key, str):
            add(position, f"{what} must be text, got {_describe(key)}")
        elif key not in allowed:
            add(position, _unknown_key_message(key, allowed, where))


def _read_text_id(node: CommentedMap, add: Callable[[Position, str], None]) -> str | None:
    """The `id` of a rule or budget when it is usable text; otherwise a problem and None."""
    value = node["id"]
    if isinstance(value, str) and value.strip() and value.isprintable():
        return value
    hint = f'; put it in quotes: id: "{value}"' if isinstance(value, (int, float)) else ""
    add(_value_pos(node, "id"), f"id: expected non-empty text, got {_describe(value)}{hint}")
    return None


class _PolicyReader:
    """Walks the top-level mapping, recording every problem instead of stopping at the first."""

    def __init__(self, document: CommentedMap, problems: _Problems, base_dir: Path) -> None:
        self.document = document
        self.problems = problems
        self.base_dir = base_dir

    def read(self, source: str, digest: str) -> Policy | None:
        self._check_keys()
        self._check_version()
        description = self._read_description()
        mode = self._read_mode()
        default = self._read_default()
        fail_open = self._read_fail_open()
        redact_headers = self._read_redact_headers()
        rules = self._read_rules()
        budgets = self._read_budgets()
        dlp = _DlpReader(self.document, self.problems, self.base_dir).read()
        prices = self._read_prices()
        block_private_resolved = self._read_network()
        if self.problems:
            return None
        return Policy(
            source=source,
            mode=mode,
            default=default,
            fail_open=fail_open,
            redact_headers=redact_headers,
            rules=rules,
            sha256=digest,
            description=description,
            budgets=budgets,
            dlp=dlp,
            prices=prices,
            block_private_resolved=block_private_resolved,
        )

    def _read_network(self) -> bool:
        node = self.document.get("network")
        if node is None:
            return False
        if not isinstance(node, CommentedMap):
            self.problems.add(
                _value_pos(self.document, "network"),
                f"network: expected a mapping such as 'block_private_resolved: true', got {_describe(node)}",
            )
            return False
        _report_unknown_keys(node, NETWORK_KEYS, "in the network section", self.problems.add, "setting names")
        value = node.get("block_private_resolved")
        if value is None:
            return False
        if _is_bool(value):
            return bool(value)
        self.problems.add(
            _value_pos(node, "block_private_resolved"),
            f"network: block_private_resolved: expected true or false, got {_describe(value)}",
        )
        return False

    def _check_keys(self) -> None:
        _report_unknown_keys(
            self.document, TOP_LEVEL_KEYS, "at the top level", self.problems.add, "setting names"
        )

    def _check_version(self) -> None:
        if "version" not in self.document:
            return
        value = self.document["version"]
        if not _is_int(value) or value != SUPPORTED_VERSION:
            self.problems.add(
                _value_pos(self.document, "version"),
                f"version: unsupported policy format version ({_describe(value)}); "
                f"this failcore reads 'version: {SUPPORTED_VERSION}'",
            )

    def _read_description(self) -> str | None:
        value = self.document.get("description")
        if value is None or isinstance(value, str):
            return value
        self.problems.add(
            _value_pos(self.document, "description"),
            f"description: expected text, got {_describe(value)}; put the text in quotes",
        )
        return None

    def _read_mode(self) -> Mode:
        if "mode" not in self.document:
            return "observe"
        value = self.document["mode"]
        if isinstance(value, str):
            normalised = value.strip().lower()
            for mode in MODES:
                if mode == normalised:
                    return mode
        self.problems.add(
            _value_pos(self.document, "mode"),
            f"mode: {_describe(value)} is not a valid mode; "
            "use 'observe' (record and warn only) or 'enforce' (actually block)",
        )
        return "observe"

    def _read_default(self) -> Action:
        if "default" not in self.document:
            return "ALLOW"
        value = self.document["default"]
        action = _parse_action(value)
        if action is None:
            self.problems.add(
                _value_pos(self.document, "default"),
                f"default: {_describe(value)} is not a valid action; use ALLOW, WARN or BLOCK",
            )
            return "ALLOW"
        return action

    def _read_fail_open(self) -> bool:
        if "fail_open" not in self.document:
            return True
        value = self.document["fail_open"]
        if _is_bool(value):
            return bool(value)
        self.problems.add(
            _value_pos(self.document, "fail_open"),
            f"fail_open: expected true or false, got {_describe(value)} "
            "(YAML 1.2 reads yes/no/on/off as text, so write true or false)",
        )
        return True

    def _read_redact_headers(self) -> frozenset[str]:
        if "redact_headers" not in self.document or self.document["redact_headers"] is None:
            return frozenset()
        names: set[str] = set()
        for value, position in _items_of(
            self.document, "redact_headers", self.problems, "redact_headers", empty_matches_nothing=False
        ):
            if isinstance(value, str) and _HEADER_NAME.fullmatch(value.strip()):
                names.add(value.strip().lower())
            else:
                self.problems.add(
                    position,
                    f"redact_headers: {_describe(value)} is not a header name; "
                    "write bare names such as x-api-key (no colon, no value, no spaces)",
                )
        return frozenset(names)

    def _read_rules(self) -> tuple[Rule, ...]:
        if "rules" not in self.document or self.document["rules"] is None:
            return ()
        value = self.document["rules"]
        if not isinstance(value, CommentedSeq):
            self.problems.add(
                _value_pos(self.document, "rules"),
                f"rules: expected a list of rules (each rule starts with '- '), got {_describe(value)}",
            )
            return ()
        rules: list[Rule] = []
        id_owner: dict[str, tuple[int, int]] = {}
        for index, node in enumerate(value):
            if not isinstance(node, CommentedMap):
                self.problems.add(
                    _item_pos(value, index),
                    f"rule {index + 1}: expected a mapping such as '- host: api.openai.com' plus "
                    f"'action: ALLOW', got {_describe(node)}",
                )
                continue
            reader = _RuleReader(index, node, self.problems)
            rule = reader.read()
            # Checked even for rules with other problems, so one pass reports everything.
            if reader.rule_id in id_owner:
                self._report_duplicate_id(reader, id_owner[reader.rule_id])
                continue
            id_owner[reader.rule_id] = (index + 1, _node_pos(node)[0])
            if rule is not None:
                rules.append(rule)
        return tuple(rules)

    def _report_duplicate_id(self, reader: _RuleReader, owner: tuple[int, int]) -> None:
        owner_number, owner_line = owner
        number = reader.index + 1
        if "id" in reader.node:
            position = _value_pos(reader.node, "id")
            fix = "give each rule a unique id"
        else:
            position = _node_pos(reader.node)
            fix = f"rule {number} has no id, so it gets the automatic id {_quote(reader.rule_id)}; add one"
        self.problems.add(
            position,
            f"rule {number}: duplicate rule id {_quote(reader.rule_id)}, already used by rule {owner_number} "
            f"on line {owner_line}; {fix}",
        )

    def _read_budgets(self) -> tuple[BudgetSpec, ...]:
        if self.document.get("budgets") is None:
            return ()
        value = self.document["budgets"]
        if not isinstance(value, CommentedSeq):
            self.problems.add(
                _value_pos(self.document, "budgets"),
                f"budgets: expected a list of budgets (each starts with '- id: ...'), got {_describe(value)}",
            )
            return ()
        budgets: list[BudgetSpec] = []
        id_owner: dict[str, tuple[int, int]] = {}
        for index, node in enumerate(value):
            if not isinstance(node, CommentedMap):
                self.problems.add(
                    _item_pos(value, index),
                    f"budget {index + 1}: expected a mapping such as '- id: openai-daily' plus "
                    f"'window:' and 'limits:', got {_describe(node)}",
                )
                continue
            reader = _BudgetReader(index, node, self.problems)
            budget = reader.read()
            if reader.budget_id is not None and reader.budget_id in id_owner:
                owner_number, owner_line = id_owner[reader.budget_id]
                self.problems.add(
                    _value_pos(node, "id"),
                    f"budget {index + 1}: duplicate budget id {_quote(reader.budget_id)}, "
                    f"already used by budget {owner_number} on line {owner_line}; give each "
                    "budget a unique id",
                )
                continue
            if reader.budget_id is not None:
                id_owner[reader.budget_id] = (index + 1, _node_pos(node)[0])
            if budget is not None:
                budgets.append(budget)
        return tuple(budgets)

    def _read_prices(self) -> dict[str, object]:
        return _read_prices(self.document, self.problems)


def _items_of(
    mapping: CommentedMap, key: str, problems: _Problems, label: str, *, empty_matches_nothing: bool = True
) -> list[tuple[object, Position]]:
    """A scalar-or-list setting as (value, position) pairs; records a problem and returns [] when unusable."""
    value = mapping[key]
    if isinstance(value, CommentedSeq):
        if not value and empty_matches_nothing:
            problems.add(
                _value_pos(mapping, key),
                f"{label}: the list is empty, so it can never match; remove '{key}' to match anything",
            )
        return [(item, _item_pos(value, index)) for index, item in enumerate(value)]
    if isinstance(value, CommentedMap):
        problems.add(_value_pos(mapping, key), f"{label}: expected one value or a list, got a mapping")
        return []
    return [(value, _value_pos(mapping, key))]


class _RuleReader:
    def __init__(self, index: int, node: CommentedMap, problems: _Problems) -> None:
        self.index = index
        self.node = node
        self.problems = problems
        self.label = f"rule {index + 1}"
        self.rule_id = f"rule-{index + 1}"

    def read(self) -> Rule | None:
        problems_before = len(self.problems)
        rule_id = self.rule_id = self._read_id()
        self._check_keys()
        action = self._read_action()
        reason = self._read_reason()
        hosts = self._read_hosts()
        ports = self._read_ports()
        schemes = self._read_schemes()
        methods = self._read_methods()
        paths = self._read_paths()
        if len(self.problems) != problems_before or action is None:
            return None
        return Rule(
            id=rule_id,
            action=action,
            reason=reason,
            hosts=hosts,
            ports=ports,
            schemes=schemes,
            methods=methods,
            paths=paths,
            line=_node_pos(self.node)[0],
        )

    def _add(self, position: Position, message: str) -> None:
        self.problems.add(position, f"{self.label}: {message}")

    def _items(self, key: str) -> list[tuple[object, Position]]:
        return _items_of(self.node, key, self.problems, f"{self.label}: {key}")

    def _read_id(self) -> str:
        default_id = f"rule-{self.index + 1}"
        if "id" not in self.node:
            return default_id
        value = _read_text_id(self.node, self._add)
        if value is None:
            return default_id
        self.label = f"rule {self.index + 1} ({value})"
        return value

    def _check_keys(self) -> None:
        _report_unknown_keys(self.node, RULE_KEYS, "in a rule", self._add, "rule keys")

    def _read_action(self) -> Action | None:
        if "action" not in self.node:
            self._add(
                _node_pos(self.node),
                "missing required key 'action'; add e.g. 'action: BLOCK' (one of ALLOW, WARN, BLOCK)",
            )
            return None
        value = self.node["action"]
        action = _parse_action(value)
        if action is None:
            self._add(
                _value_pos(self.node, "action"),
                f"action: {_describe(value)} is not a valid action; use ALLOW, WARN or BLOCK",
            )
        return action

    def _read_reason(self) -> str | None:
        value = self.node.get("reason")
        if value is None or isinstance(value, str):
            return value
        self._add(_value_pos(self.node, "reason"), f"reason: expected text, got {_describe(value)}; quote it")
        return None

    def _read_hosts(self) -> HostPattern | None:
        if "host" not in self.node:
            return None
        exact: set[str] = set()
        suffixes: list[str] = []
        match_any = False
        for value, position in self._items("host"):
            parsed = _parse_host_pattern(value)
            if isinstance(parsed, _Invalid):
                self._add(position, f"host: {parsed.message}")
            elif parsed == "*":
                match_any = True
            elif parsed.startswith("."):
                suffixes.append(parsed)
            else:
                exact.add(parsed)
        if match_any:
            return None
        return HostPattern(frozenset(exact), tuple(dict.fromkeys(suffixes)))

    def _read_ports(self) -> frozenset[int] | None:
        if "port" not in self.node:
            return None
        ports: set[int] = set()
        for value, position in self._items("port"):
            if not _is_int(value):
                self._add(
                    position,
                    f"port: {_describe(value)} is not a port number; "
                    "write an integer from 1 to 65535 without quotes, e.g. 'port: 443'",
                )
            elif not 1 <= value <= 65535:
                self._add(position, f"port: {value} is out of range; ports are 1 to 65535")
            else:
                ports.add(int(value))
        return frozenset(ports)

    def _read_schemes(self) -> frozenset[str] | None:
        if "scheme" not in self.node:
            return None
        schemes: set[str] = set()
        for value, position in self._items("scheme"):
            normalised = value.strip().lower() if isinstance(value, str) else None
            if normalised in SCHEMES:
                schemes.add(normalised)
            else:
                self._add(
                    position,
                    f"scheme: {_describe(value)} is not a supported scheme; "
                    f"use one of {', '.join(SCHEMES)} (without '://')",
                )
        return frozenset(schemes)

    def _read_methods(self) -> frozenset[str] | None:
        if "method" not in self.node:
            return None
        methods: set[str] = set()
        match_any = False
        for value, position in self._items("method"):
            text = value.strip() if isinstance(value, str) else None
            if text == "*":
                match_any = True
            elif text is not None and _METHOD_NAME.fullmatch(text):
                methods.add(text.upper())
            else:
                self._add(
                    position,
                    f"method: {_describe(value)} is not an HTTP method; "
                    "write a name such as GET or POST, or '*' for any method",
                )
        return None if match_any else frozenset(methods)

    def _read_paths(self) -> PathPattern | None:
        if "path" not in self.node:
            return None
        prefixes: list[str] = []
        globs: list[str] = []
        regexes: list[str] = []
        match_any = False
        for value, position in self._items("path"):
            if not isinstance(value, str):
                self._add(position, f"path: expected text such as /v1/chat, got {_describe(value)}")
                continue
            if value in ("*", "**"):
                match_any = True
                continue
            problem = _path_problem(value)
            if problem is not None:
                self._add(position, f"path: {problem}")
            elif _GLOB_CHARS.isdisjoint(value):
                prefixes.append(value)
            else:
                try:
                    regex_text = glob_to_regex(value)
                    re2.compile(regex_text)
                except (GlobError, re2.error) as exc:
                    self._add(position, f"path: bad glob {_quote(value)}: {exc}")
                    continue
                globs.append(value)
                regexes.append(regex_text)
        if match_any:
            return None
        regex = re2.compile("|".join(f"(?:{part})" for part in regexes)) if regexes else None
        return PathPattern(tuple(dict.fromkeys(prefixes)), tuple(globs), regex)


class _BudgetReader:
    def __init__(self, index: int, node: CommentedMap, problems: _Problems) -> None:
        self.index = index
        self.node = node
        self.problems = problems
        self.label = f"budget {index + 1}"
        self.budget_id: str | None = None

    def read(self) -> BudgetSpec | None:
        problems_before = len(self.problems)
        self.budget_id = self._read_id()
        self._check_keys()
        window = self._read_window()
        scope = self._read_scope()
        limits = self._read_limits(window)
        soft = self._read_soft()
        on_exceed = self._read_on_exceed()
        if len(self.problems) != problems_before or self.budget_id is None or window is None:
            return None
        return BudgetSpec(
            id=self.budget_id,
            window=window,
            limits=MappingProxyType(limits),
            scope=scope,
            soft=soft,
            on_exceed=on_exceed,
            line=_node_pos(self.node)[0],
        )

    def _add(self, position: Position, message: str) -> None:
        self.problems.add(position, f"{self.label}: {message}")

    def _read_id(self) -> str | None:
        if "id" not in self.node:
            self._add(
                _node_pos(self.node),
                "missing required key 'id'; add e.g. 'id: openai-daily' "
                "(the id is shown on the tape and in the 429 answer)",
            )
            return None
        value = _read_text_id(self.node, self._add)
        if value is not None:
            self.label = f"budget {self.index + 1} ({value})"
        return value

    def _check_keys(self) -> None:
        _report_unknown_keys(self.node, BUDGET_KEYS, "in a budget", self._add, "budget keys")

    def _read_window(self) -> BudgetWindow | None:
        if "window" not in self.node:
            self._add(
                _node_pos(self.node),
                f"missing required key 'window'; add e.g. 'window: day' (one of {', '.join(BUDGET_WINDOWS)})",
            )
            return None
        value = self.node["window"]
        normalised = value.strip().lower() if isinstance(value, str) else None
        for window in BUDGET_WINDOWS:
            if window == normalised:
                return window
        self._add(
            _value_pos(self.node, "window"),
            f"window: {_describe(value)} is not a budget window; use run (this proxy run), "
            "or minute, hour or day (rolling windows of 60 s, 3600 s or 86400 s)",
        )
        return None

    def _read_scope(self) -> BudgetScope:
        node = self.node.get("scope")
        if node is None:
            return BudgetScope()
        if not isinstance(node, CommentedMap):
            self._add(
                _value_pos(self.node, "scope"),
                f"scope: expected a mapping such as 'host: api.openai.com', got {_describe(node)}",
            )
            return BudgetScope()
        for key in node:
            if not isinstance(key, str) or key not in BUDGET_SCOPE_KEYS:
                message = (
                    _unknown_key_message(key, BUDGET_SCOPE_KEYS, "in a budget scope")
                    if isinstance(key, str)
                    else f"scope keys must be text, got {_describe(key)}"
                )
                self._add(_key_pos(node, key), f"scope: {message}")
        hosts = self._read_scope_hosts(node) if node.get("host") is not None else None
        providers = self._read_scope_providers(node) if node.get("provider") is not None else None
        globs, regex = self._read_scope_models(node) if node.get("model") is not None else (None, None)
        return BudgetScope(hosts=hosts, providers=providers, model_globs=globs, model_regex=regex)

    def _read_scope_hosts(self, node: CommentedMap) -> HostPattern | None:
        exact: set[str] = set()
        suffixes: list[str] = []
        match_any = False
        for value, position in _items_of(node, "host", self.problems, f"{self.label}: scope: host"):
            parsed = _parse_host_pattern(value)
            if isinstance(parsed, _Invalid):
                self._add(position, f"scope: host: {parsed.message}")
            elif parsed == "*":
                match_any = True
            elif parsed.startswith("."):
                suffixes.append(parsed)
            else:
                exact.add(parsed)
        return None if match_any else HostPattern(frozenset(exact), tuple(dict.fromkeys(suffixes)))

    def _read_scope_providers(self, node: CommentedMap) -> frozenset[str] | None:
        providers: set[str] = set()
        match_any = False
        for value, position in _items_of(node, "provider", self.problems, f"{self.label}: scope: provider"):
            normalised = value.strip().lower() if isinstance(value, str) else None
            if normalised == "*":
                match_any = True
            elif normalised in LLM_PROVIDERS:
                providers.add(normalised)
            else:
                close = difflib.get_close_matches(normalised or "", LLM_PROVIDERS, n=1)
                hint = f' Did you mean "{close[0]}"?' if close else ""
                self._add(
                    position,
                    f"scope: provider: {_describe(value)} is not a provider failcore "
                    f"recognises, so the budget would never count anything.{hint} "
                    f"Known providers: {', '.join(LLM_PROVIDERS)}",
                )
        return None if match_any else frozenset(providers)

    def _read_scope_models(self, node: CommentedMap) -> tuple[tuple[str, ...] | None, _FullMatcher | None]:
        globs: list[str] = []
        regexes: list[str] = []
        for value, position in _items_of(node, "model", self.problems, f"{self.label}: scope: model"):
            text = value.strip().lower() if isinstance(value, str) else ""
            if text == "*":
                return None, None
            if not text or not text.isprintable():
                self._add(
                    position,
                    f"scope: model: expected a model name or glob such as gpt-4o*, got {_describe(value)}",
                )
                continue
            try:
                regex_text = model_glob_to_regex(text)
                re2.compile(regex_text)
            except (GlobError, re2.error) as exc:
                self._add(position, f"scope: model: bad glob {_quote(text)}: {exc}")
                continue
            globs.append(text)
            regexes.append(regex_text)
        if not regexes:
            return (), None
        return tuple(globs), re2.compile("|".join(f"(?:{part})" for part in regexes))

    def _read_limits(self, window: BudgetWindow | None) -> dict[str, float]:
        if self.node.get("limits") is None:
            self._add(
                _key_pos(self.node, "limits") if "limits" in self.node else _node_pos(self.node),
                f"missing limits; add e.g. 'limits: {{cost_usd: 10.0}}' (any of {', '.join(BUDGET_METRICS)})",
            )
            return {}
        node = self.node["limits"]
        if not isinstance(node, CommentedMap):
            self._add(
                _value_pos(self.node, "limits"),
                f"limits: expected a mapping such as 'cost_usd: 10.0', got {_describe(node)}",
            )
            return {}
        if not node:
            self._add(
                _value_pos(self.node, "limits"),
                f"limits: give at least one limit (any of {', '.join(BUDGET_METRICS)})",
            )
        limits: dict[str, float] = {}
        for metric in node:
            if not isinstance(metric, str) or metric not in BUDGET_METRICS:
                message = (
                    _unknown_key_message(metric, BUDGET_METRICS, "in budget limits")
                    if isinstance(metric, str)
                    else f"limit names must be text, got {_describe(metric)}"
                )
                self._add(_key_pos(node, metric), f"limits: {message}")
                continue
            limit = self._limit_value(node, metric)
            if metric == "wall_seconds" and window is not None and window != "run":
                self._add(
                    _key_pos(node, metric),
                    f"limits: wall_seconds only applies to 'window: run' (it limits how long a run "
                    f"lasts); this budget's window is {window}",
                )
            elif limit is not None:
                limits[metric] = limit
        return limits

    def _limit_value(self, node: CommentedMap, metric: str) -> float | None:
        value = node[metric]
        position = _value_pos(node, metric)
        if metric in COUNT_METRICS:
            if _is_int(value) and value > 0:
                return int(value)
            self._add(
                position, f"limits: {metric}: expected a whole number greater than 0, got {_describe(value)}"
            )
            return None
        if (_is_int(value) or isinstance(value, float)) and math.isfinite(value) and value > 0:
            return float(value)
        self._add(position, f"limits: {metric}: expected a number greater than 0, got {_describe(value)}")
        return None

    def _read_soft(self) -> float:
        if self.node.get("soft") is None:
            return DEFAULT_SOFT_FRACTION
        value = self.node["soft"]
        if (_is_int(value) or isinstance(value, float)) and 0 < value <= 1:
            return float(value)
        self._add(
            _value_pos(self.node, "soft"),
            f"soft: expected a fraction of each limit greater than 0 and at most 1 (e.g. 0.8 warns "
            f"from 80%), got {_describe(value)}",
        )
        return DEFAULT_SOFT_FRACTION

    def _read_on_exceed(self) -> OnExceed:
        if self.node.get("on_exceed") is None:
            return "block"
        value = self.node["on_exceed"]
        normalised = value.strip().lower() if isinstance(value, str) else None
        for choice in ON_EXCEED:
            if choice == normalised:
                return choice
        self._add(
            _value_pos(self.node, "on_exceed"),
            f"on_exceed: {_describe(value)} is not valid; use block (finish calls in flight, refuse "
            "the next request) or cut_stream (also cut a streaming response at the limit)",
        )
        return "block"


class _DlpReader:
    """The `dlp` section. Rules referenced by id are checked against built-in, custom and imported ones."""

    def __init__(self, document: CommentedMap, problems: _Problems, base_dir: Path) -> None:
        self.document = document
        self.problems = problems
        self.base_dir = base_dir

    def read(self) -> DlpSettings:
        if "dlp" not in self.document:
            return DEFAULT_DLP_SETTINGS
        node = self.document["dlp"]
        if node is None:
            return dataclasses.replace(DEFAULT_DLP_SETTINGS, declared=True)
        if not isinstance(node, CommentedMap):
            self.problems.add(
                _value_pos(self.document, "dlp"),
                f"dlp: expected a mapping of DLP settings such as 'default_action: WARN', "
                f"got {_describe(node)}",
            )
            return DEFAULT_DLP_SETTINGS
        self.node = node
        self._check_keys()
        scan_request, scan_response = self._read_scan()
        gitleaks = self._read_gitleaks()
        custom_rules, custom_ids = self._read_custom()
        known_ids: frozenset[str] | None = None
        if gitleaks is not _GITLEAKS_FAILED:
            imported_ids = {rule.id for rule in gitleaks[1]} if gitleaks is not None else set()
            known_ids = _builtin_rule_ids() | custom_ids | imported_ids
        path, rules, skipped = (None, (), ()) if gitleaks in (None, _GITLEAKS_FAILED) else gitleaks
        return DlpSettings(
            enabled=self._read_bool(node, "enabled", "dlp: enabled", default=True),
            declared=True,
            stream=self._read_stream(),
            default_action=self._read_action(node, "default_action", "dlp: default_action") or "WARN",
            severity_actions=self._read_severity_actions(),
            rule_actions=self._read_rule_actions(known_ids),
            scan_request=scan_request,
            scan_response=scan_response,
            gitleaks_path=path,
            gitleaks_rules=rules,
            gitleaks_skipped=skipped,
            custom_rules=custom_rules,
            unscannable=self._read_unscannable(),
        )

    def _read_unscannable(self) -> Action:
        if self.node.get("unscannable") is None:
            return "BLOCK"
        value = self.node["unscannable"]
        action = _parse_action(value)
        if action in ("BLOCK", "WARN"):
            return action
        self.problems.add(
            _value_pos(self.node, "unscannable"),
            f"dlp: unscannable: {_describe(value)} is not valid; use BLOCK (refuse a body that "
            "cannot be scanned whole) or WARN (forward it with a warning)",
        )
        return "BLOCK"

    def _check_keys(self) -> None:
        def add(position: Position, message: str) -> None:
            self.problems.add(position, f"dlp: {message}")

        _report_unknown_keys(self.node, DLP_KEYS, "in the dlp section", add, "setting names")

    def _read_bool(self, node: CommentedMap, key: str, label: str, *, default: bool) -> bool:
        if node.get(key) is None:
            return default
        value = node[key]
        if _is_bool(value):
            return bool(value)
        self.problems.add(_value_pos(node, key), f"{label}: expected true or false, got {_describe(value)}")
        return default

    def _read_action(self, node: CommentedMap, key: object, label: str) -> Action | None:
        if key not in node:
            return None
        value = node[key]
        action = _parse_action(value)
        if action is None:
            self.problems.add(
                _value_pos(node, key),
                f"{label}: {_describe(value)} is not a valid action; use ALLOW, WARN or BLOCK",
            )
        return action

    def _read_stream(self) -> DlpStreamMode:
        if self.node.get("stream") is None:
            return "side"
        value = self.node["stream"]
        normalised = value.strip().lower() if isinstance(value, str) else None
        for mode in DLP_STREAM_MODES:
            if mode == normalised:
                return mode
        self.problems.add(
            _value_pos(self.node, "stream"),
            f"dlp: stream: {_describe(value)} is not valid; use side (scan a copy, never "
            "delay the stream) or strict (hold back a sliding window and cut the stream on a "
            "BLOCK hit)",
        )
        return "side"

    def _mapping(self, key: str, example: str) -> CommentedMap | None:
        node = self.node.get(key)
        if node is None:
            return None
        if isinstance(node, CommentedMap):
            return node
        self.problems.add(
            _value_pos(self.node, key),
            f"dlp: {key}: expected a mapping such as '{example}', got {_describe(node)}",
        )
        return None

    def _read_severity_actions(self) -> Mapping[str, Action]:
        node = self._mapping("severity_actions", "{critical: BLOCK}")
        if node is None:
            return _NO_ACTIONS
        actions: dict[str, Action] = {}
        for severity in node:
            if not isinstance(severity, str) or severity.strip().lower() not in SEVERITIES:
                self.problems.add(
                    _key_pos(node, severity),
                    f"dlp: severity_actions: {_describe(severity)} is not a severity; "
                    f"use {', '.join(SEVERITIES)}",
                )
                continue
            action = self._read_action(node, severity, f"dlp: severity_actions: {severity}")
            if action is not None:
                actions[severity.strip().lower()] = action
        return MappingProxyType(actions)

    def _read_rule_actions(self, known_ids: frozenset[str] | None) -> Mapping[str, Action]:
        node = self._mapping("rule_actions", "{aws-access-key-id: BLOCK}")
        if node is None:
            return _NO_ACTIONS
        actions: dict[str, Action] = {}
        for rule_id in node:
            if not isinstance(rule_id, str):
                self.problems.add(
                    _key_pos(node, rule_id), f"dlp: rule_actions: rule ids are text, got {_describe(rule_id)}"
                )
                continue
            if known_ids is not None and rule_id not in known_ids:
                close = difflib.get_close_matches(rule_id, sorted(known_ids), n=3)
                hint = f" Close matches: {', '.join(close)}." if close else ""
                self.problems.add(
                    _key_pos(node, rule_id),
                    f"dlp: rule_actions: unknown DLP rule id {_quote(rule_id)}; it is not a "
                    f"built-in, custom or imported rule.{hint}",
                )
                continue
            action = self._read_action(node, rule_id, f"dlp: rule_actions: {rule_id}")
            if action is not None:
                actions[rule_id] = action
        return MappingProxyType(actions)

    def _read_scan(self) -> tuple[bool, bool]:
        node = self._mapping("scan", "{request: true, response: true}")
        if node is None:
            return True, True
        for key in node:
            if not isinstance(key, str) or key not in DLP_SCAN_KEYS:
                message = (
                    _unknown_key_message(key, DLP_SCAN_KEYS, "in dlp scan")
                    if isinstance(key, str)
                    else f"setting names must be text, got {_describe(key)}"
                )
                self.problems.add(_key_pos(node, key), f"dlp: scan: {message}")
        return (
            self._read_bool(node, "request", "dlp: scan: request", default=True),
            self._read_bool(node, "response", "dlp: scan: response", default=True),
        )

    def _read_gitleaks(self) -> _GitleaksResult | None:
        if self.node.get("import_gitleaks") is None:
            return None
        value = self.node["import_gitleaks"]
        position = _value_pos(self.node, "import_gitleaks")
        if not isinstance(value, str) or not value.strip():
            self.problems.add(
                position,
                f"dlp: import_gitleaks: expected bundled or the path of a gitleaks.toml file, "
                f"got {_describe(value)}",
            )
            return _GITLEAKS_FAILED
        if value.strip() == "bundled":
            path = BUNDLED_GITLEAKS
        else:
            path = (self.base_dir / Path(value.strip()).expanduser()).resolve()
        try:
            imported = import_gitleaks(path)
        except OSError as exc:
            self.problems.add(
                position,
                f"dlp: import_gitleaks: cannot read {path}: {exc.strerror or exc} "
                "(relative paths are resolved from the policy file's directory)",
            )
            return _GITLEAKS_FAILED
        except tomllib.TOMLDecodeError as exc:
            self.problems.add(position, f"dlp: import_gitleaks: {path} is not valid TOML: {exc}")
            return _GITLEAKS_FAILED
        # The importer trusts the file's structure: a table where a list belongs surfaces as one of these.
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            self.problems.add(
                position, f"dlp: import_gitleaks: {path} is not a usable gitleaks config: {exc}"
            )
            return _GITLEAKS_FAILED
        return path, tuple(imported.rules), tuple(imported.skipped)

    def _read_custom(self) -> tuple[tuple[DlpRule, ...], set[str]]:
        """Parsed custom rules, plus every id written (so rule_actions does not also flag a broken rule)."""
        if self.node.get("custom") is None:
            return (), set()
        node = self.node["custom"]
        if not isinstance(node, CommentedSeq):
            self.problems.add(
                _value_pos(self.node, "custom"),
                f"dlp: custom: expected a list of rules (each starts with '- id: ...'), "
                f"got {_describe(node)}",
            )
            return (), set()
        rules: list[DlpRule] = []
        ids: set[str] = set()
        taken = _builtin_rule_ids()
        for index, item in enumerate(node):
            rule_id = item.get("id") if isinstance(item, CommentedMap) else None
            if isinstance(rule_id, str):
                if rule_id in ids or rule_id in taken:
                    owner = "another custom rule" if rule_id in ids else "a built-in rule"
                    self.problems.add(
                        _value_pos(item, "id"),
                        f"dlp: custom rule {index + 1}: id {_quote(rule_id)} is already "
                        f"used by {owner}; give each rule a unique id",
                    )
                    continue
                ids.add(rule_id)
            try:
                rules.extend(parse_custom_rules([_to_plain(item)], "policy"))
            except ValueError as exc:
                self.problems.add(
                    _custom_rule_problem_pos(node, index, str(exc)), f"dlp: custom rule {index + 1}: {exc}"
                )
        return tuple(rules), ids


_GitleaksResult = tuple[Path, tuple[DlpRule, ...], tuple[tuple[str, str], ...]]
# Marks an import_gitleaks that failed: rule ids it would have defined are unknown, so none are checked.
_GITLEAKS_FAILED: _GitleaksResult = (Path(), (), ())

_CUSTOM_RULE_FIELD = re.compile(r"^custom DLP rule .*?: (?:unknown field\(s\) )?([a-z_]+)")


def _custom_rule_problem_pos(sequence: CommentedSeq, index: int, message: str) -> Position:
    """The field a parse_custom_rules message names, else the rule itself."""
    item = sequence[index]
    match = _CUSTOM_RULE_FIELD.match(message)
    if isinstance(item, CommentedMap) and match and match.group(1) in item:
        key = match.group(1)
        return _key_pos(item, key) if "unknown field" in message else _value_pos(item, key)
    return _item_pos(sequence, index)


def _builtin_rule_ids() -> frozenset[str]:
    return frozenset(rule.id for rule in builtin_rules())


def _to_plain(value: object) -> object:
    """ruamel's round-trip types as plain Python values, so nothing downstream sees YAML node classes."""
    if isinstance(value, dict):
        return {_to_plain(key): _to_plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_plain(item) for item in value]
    if _is_bool(value):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def _read_prices(document: CommentedMap, problems: _Problems) -> dict[str, object]:
    node = document.get("prices")
    if node is None:
        return {}
    if not isinstance(node, CommentedMap):
        problems.add(
            _value_pos(document, "prices"),
            f"prices: expected a mapping of model id to prices such as "
            f"'my-model: {{input: 3.0, output: 12.0}}', got {_describe(node)}",
        )
        return {}
    overrides = _to_plain(node)
    assert isinstance(overrides, dict)
    try:
        load_price_table(overrides=overrides)
    except ValueError as combined:
        _report_price_problems(document, node, overrides, combined, problems)
    return overrides


def _report_price_problems(
    document: CommentedMap, node: CommentedMap, overrides: dict, combined: ValueError, problems: _Problems
) -> None:
    """Price entries are retried one by one so every bad entry is reported at its own line."""
    found = False
    for key, plain_key in zip(node, overrides, strict=True):
        try:
            load_price_table(overrides={plain_key: overrides[plain_key]})
        except ValueError as exc:
            found = True
            problems.add(_price_problem_pos(node, key, str(exc)), str(exc))
    if not found:
        problems.add(_key_pos(document, "prices"), str(combined))


def _price_problem_pos(node: CommentedMap, model: object, message: str) -> Position:
    entry = node[model]
    match = re.search(r" field '([a-z_]+)'", message.replace(repr(model), "", 1))
    if isinstance(entry, CommentedMap) and match:
        key = match.group(1)
        if key in entry:
            return _key_pos(entry, key) if message.endswith("unknown field") else _value_pos(entry, key)
        return _value_pos(node, model)
    return _key_pos(node, model)


@dataclass(frozen=True, slots=True)
class _Invalid:
    message: str


def _parse_host_pattern(value: object) -> str | _Invalid:
    """Normalised host pattern: "*", ".suffix" for "*.suffix", or an exact lower-case host."""
    if not isinstance(value, str):
        return _Invalid(f"expected a host name such as api.openai.com, got {_describe(value)}")
    text = value.strip().lower()
    if not text:
        return _Invalid(
            "empty host name; write a host such as api.openai.com, "
            "'*.example.com' for its subdomains, or '*' for any host"
        )
    if text == "*":
        return "*"
    if "/" in text:
        return _Invalid(
            f"{_quote(value)} looks like a URL; write only the host name (e.g. api.openai.com) "
            "and use 'scheme:' and 'path:' for the rest"
        )
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if ":" in name:
        ip = canonical_ip(name)
        if ip is None:
            return _Invalid(
                f"{_quote(value)} is not a host name; put the port in 'port:' "
                "(e.g. host: api.openai.com with port: 443)"
            )
        return _Invalid("wildcards cannot be combined with an IP address") if wildcard else ip
    name = name.rstrip(".")
    ip = canonical_ip(name) if name[:1].isdigit() else None
    if ip is not None:
        return _Invalid("wildcards cannot be combined with an IP address") if wildcard else ip
    if "*" in name:
        return _Invalid(
            f"{_quote(value)}: '*' is only allowed as the whole host ('*') or as the first label "
            "('*.example.com', which matches subdomains but not example.com itself)"
        )
    if not _HOST_NAME.fullmatch(name):
        return _Invalid(f"{_quote(value)} is not a valid host name; use letters, digits, '-' and '.' only")
    return "." + name if wildcard else name


def _path_problem(path: str) -> str | None:
    if not path:
        return "empty path; write a path such as /v1/chat, or remove 'path' to match any path"
    if not (path.startswith("/") or path.startswith("**")):
        return (
            f"{_quote(path)} must start with '/' (paths are matched from the root, e.g. /v1/chat); "
            "use '*' to match any path"
        )
    if not path.isprintable() or " " in path:
        return f"{_quote(path)} contains spaces or control characters, which never occur in a request path"
    return None


# --------------------------------------------------------------------------------------------------
# Globs
# --------------------------------------------------------------------------------------------------


class GlobError(ValueError):
    pass


def glob_to_regex(glob: str) -> str:
    """Translate a path glob to RE2 syntax: '*' stays in one segment, '**' crosses '/', '?' is one char."""
    parts: list[str] = []
    index = 0
    while index < len(glob):
        char = glob[index]
        if char == "*":
            end = index
            while end < len(glob) and glob[end] == "*":
                end += 1
            parts.append(".*" if end - index > 1 else "[^/]*")
            index = end
        elif char == "?":
            parts.append("[^/]")
            index += 1
        elif char == "[":
            char_class, index = _translate_class(glob, index)
            parts.append(char_class)
        else:
            parts.append(_regex_literal(char))
            index += 1
    return "".join(parts)


def model_glob_to_regex(glob: str) -> str:
    """Translate a model glob to RE2 syntax: '*' is any run of characters ('/' included, as in
    openai/gpt-4o), '?' one character, '[...]' a class."""
    parts: list[str] = []
    index = 0
    while index < len(glob):
        char = glob[index]
        if char == "*":
            parts.append(".*")
            index += 1
        elif char == "?":
            parts.append(".")
            index += 1
        elif char == "[":
            char_class, index = _translate_class(glob, index, separator=None)
            parts.append(char_class)
        else:
            parts.append(_regex_literal(char))
            index += 1
    return "".join(parts)


def _translate_class(glob: str, start: int, *, separator: str | None = "/") -> tuple[str, int]:
    index = start + 1
    negate = index < len(glob) and glob[index] in "!^"
    if negate:
        index += 1
    body_start = index
    if index < len(glob) and glob[index] == "]":
        index += 1  # a ']' right after '[' is a literal, as in shell globs
    while index < len(glob) and glob[index] != "]":
        index += 1
    if index >= len(glob):
        raise GlobError(
            f"the '[' at character {start + 1} is never closed; "
            "add the missing ']' or write '[[]' to match a literal '['"
        )
    body = glob[body_start:index]
    items: list[str] = []
    position = 0
    while position < len(body):
        if position + 2 < len(body) and body[position + 1] == "-":
            low, high = body[position], body[position + 2]
            if low > high:
                raise GlobError(f"the range '{low}-{high}' is reversed; write '{high}-{low}'")
            items.append(f"{_regex_literal(low)}-{_regex_literal(high)}")
            position += 3
        else:
            items.append(_regex_literal(body[position]))
            position += 1
    if negate:
        # A negated class must not let a single-segment pattern leak into the next segment.
        excluded = _regex_literal(separator) if separator is not None else ""
        return "[^" + "".join(items) + excluded + "]", index + 1
    return "[" + "".join(items) + "]", index + 1


def _regex_literal(char: str) -> str:
    if char.isascii() and char.isalnum():
        return char
    return f"\\x{{{ord(char):x}}}"


# --------------------------------------------------------------------------------------------------
# Decisions (hot path)
# --------------------------------------------------------------------------------------------------


def decide(policy: Policy, *, host: str, port: int, scheme: str, method: str, path: str) -> Decision:
    host = _normalise_host(host)
    scheme = scheme.lower()
    method = method.upper()
    path = _request_path(path)
    for rule, decision in policy._decision_table:
        if rule.matches_request(host, port, scheme, method, path):
            return decision
    return policy._default_decision


def connect_verdict(policy: Policy, *, host: str, port: int) -> Decision:
    """Verdict for a CONNECT, where only host and port are known.

    BLOCK only when every request through the tunnel would be blocked: a rule that could allow some
    request (because it also constrains method or path) lets the tunnel open and leaves the final word
    to `decide` on each request.
    """
    host = _normalise_host(host)
    for rule, decision in policy._decision_table:
        if not rule.matches_endpoint(host, port):
            continue
        if rule.schemes is not None and _TUNNEL_SCHEME not in rule.schemes:
            continue
        if not rule.constrains_request_line:
            return decision
        if rule.action != "BLOCK":
            reason = (
                f"rule '{rule.id}' allows some requests to {host}:{port}; "
                "each request is checked when it arrives"
            )
            return _make_decision(rule.action, policy.mode, rule.id, reason)
    return policy._default_decision


def tcp_verdict(policy: Policy, *, host: str, port: int) -> Decision:
    """Verdict for raw (non-HTTP) TCP through a tunnel: only host, port and the scheme `tcp` are known.

    A rule that constrains method or path describes HTTP requests and cannot match raw bytes; a rule
    whose schemes leave out `tcp` does not either.
    """
    host = _normalise_host(host)
    for rule, decision in policy._decision_table:
        if rule.constrains_request_line or (rule.schemes is not None and "tcp" not in rule.schemes):
            continue
        if rule.matches_endpoint(host, port):
            return decision
    return policy._default_decision


def is_non_global(address: str) -> bool:
    """Whether an address is one `network.block_private_resolved` refuses: anything not globally
    routable (private, loopback, link-local and so cloud metadata, CGNAT, reserved, unspecified),
    an IPv4-mapped IPv6 address judged as its IPv4 address."""
    ip = ipaddress.ip_address(canonical_ip(address) or address)
    return not ip.is_global or ip.is_multicast


def normalise_host(host: str) -> str:
    """A host as policy rules match it: lower case, no trailing dot or brackets, IPs canonical."""
    return _normalise_host(host)


def _normalise_host(host: str) -> str:
    host = host.lower()
    if host.endswith("."):
        host = host.rstrip(".")
    if host.startswith("["):
        host = host.strip("[]")
    if ":" in host or host[:1].isdigit():
        return canonical_ip(host) or host
    return host


@functools.lru_cache(maxsize=4096)
def canonical_ip(text: str) -> str | None:
    """The address an IP literal in any spelling the resolver accepts stands for, canonically written;
    None for a name.

    IPv4 as `inet_aton` reads it (what getaddrinfo does with a numeric host, and so what mitmproxy
    connects to): one to four parts, each decimal, `0x` hex or `0` octal, the last filling the
    remaining bytes (`2130706434`, `0x7f000002`, `127.2`, `0177.0.0.2` are all 127.0.0.2). IPv6
    compressed, without brackets or a zone id; an IPv4-mapped address (`::ffff:127.0.0.2`, which a
    dual-stack socket reaches as 127.0.0.2) as its IPv4 address.
    """
    text = text.strip().lower().strip("[]").rstrip(".")
    if ":" in text:
        try:
            ip = ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            return None
        mapped = ip.ipv4_mapped
        return str(mapped) if mapped is not None else ip.compressed
    return _inet_aton(text)


def _inet_aton(text: str) -> str | None:
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers: list[int] = []
    for part in parts:
        if part.startswith("0x"):
            digits, base = part[2:], 16
        elif len(part) > 1 and part.startswith("0"):
            digits, base = part[1:], 8
        else:
            digits, base = part, 10
        if not digits or not all(c in "0123456789abcdef"[:base] for c in digits):
            return None
        numbers.append(int(digits, base))
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    value = last
    for i, n in enumerate(head):
        value |= n << (8 * (3 - i))
    return str(ipaddress.IPv4Address(value))


def _request_path(path: str) -> str:
    """The path as the origin server will resolve it: no query or fragment, dot segments removed."""
    end = path.find("?")
    if end != -1:
        path = path[:end]
    end = path.find("#")
    if end != -1:
        path = path[:end]
    if not path:
        return "/"
    # Only paths that could disguise their target (/v1/../admin, //admin, %61dmin) pay for canonicalising.
    if path[0] == "/" and ("%" in path or "//" in path or "/." in path):
        return _canonical_path(path)
    return path


def _canonical_path(path: str) -> str:
    path = _PERCENT_ESCAPE.sub(_decode_unreserved, path)
    segments = path.split("/")
    kept: list[str] = []
    for segment in segments[1:]:
        if segment in ("", "."):
            continue
        if segment == "..":
            if kept:
                kept.pop()
            continue
        kept.append(segment)
    canonical = "/" + "/".join(kept)
    if kept and segments[-1] in ("", ".", ".."):
        canonical += "/"
    return canonical


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0).upper()
