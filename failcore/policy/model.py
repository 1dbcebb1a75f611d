"""The policy's data model: the types and constants every other module imports.

Nothing here reads YAML or decides anything, so importing it is cheap (budget.py, the proxy addons and
the views import only this). `Policy` builds its ready-made decisions once, at construction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, Protocol

from failcore.policy.address import loopback_readings, normalise_host
from failcore.policy.contracts import ToolContract
from failcore.policy.runtime import (
    DEFAULT_EXEC_RULES,
    DEFAULT_FS_RULES,
    DEFAULT_NET_RULES,
    ExecRules,
    FsRules,
    NetRules,
)

if TYPE_CHECKING:
    from failcore.dlp.model import DlpRule

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
    "vertex_ai",
    "bedrock",
    "ollama",
    "openrouter",
    "together",
    "groq",
    "mistral",
    "deepseek",
    "xai",
    "fireworks",
)

DLP_STREAM_MODES: tuple[DlpStreamMode, ...] = ("side", "strict")

# (line, column), both 1-based.
Position = tuple[int, int]


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


class FullMatcher(Protocol):
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
    regex: FullMatcher | None = field(compare=False)
    # The same patterns read regardless of case (Express, ASP.NET Core, Fiber and IIS route paths so):
    # the prefixes lower-cased and the globs' regex compiled case-insensitive.
    folded_prefixes: tuple[str, ...] = field(default=(), compare=False)
    folded_regex: FullMatcher | None = field(default=None, compare=False)
    # Whether any pattern has an upper-case letter (else a lower-case path reads the same folded).
    cased: bool = field(default=False, compare=False)

    def matches(self, path: str) -> bool:
        if path.startswith(self.prefixes):
            return True
        return self.regex is not None and self.regex.fullmatch(path) is not None

    def matches_folded(self, path: str, lowered: str) -> bool:
        """Whether `path` (`lowered`: its `str.lower()`) matches regardless of case."""
        if lowered.startswith(self.folded_prefixes):
            return True
        return self.folded_regex is not None and self.folded_regex.fullmatch(path) is not None


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


# The model of an LLM call whose request could not be read (or a batch naming several): any model.
UNKNOWN_MODEL = "<unknown model>"


@dataclass(frozen=True, slots=True)
class BudgetScope:
    """Which LLM calls a budget counts; a `None` field was omitted (or "*") and matches anything.

    A budget scoped to a provider or model never counts a call whose provider or model is absent (not
    an LLM call, or one that names no model), but a model scope counts UNKNOWN_MODEL (an LLM call whose
    body failcore could not read: it may name any model, so it is counted, never let through); one
    scoped to a loopback host counts its other spellings too (`localhost` = `127.0.0.1`, see
    `loopback_readings`).
    """

    hosts: HostPattern | None = None
    providers: frozenset[str] | None = None
    model_globs: tuple[str, ...] | None = None
    model_regex: FullMatcher | None = field(default=None, compare=False)

    def matches(self, *, host: str, provider: str | None, model: str | None) -> bool:
        if self.hosts is not None and not (
            self.hosts.matches(normalise_host(host)) or any(map(self.hosts.matches, loopback_readings(host)))
        ):
            return False
        if self.providers is not None and (provider is None or provider.lower() not in self.providers):
            return False
        if self.model_regex is None:
            return True
        if model == UNKNOWN_MODEL:
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
    # What a request body that cannot be scanned whole (it decodes past the decode limit, or does not
    # decode as the gzip/deflate/br/zstd/compress its Content-Encoding claims) gets when the policy can
    # BLOCK on a hit: refused (BLOCK) or forwarded with a warning (WARN). In `strict` stream mode a
    # response stream in either case is cut (BLOCK) or scanned only as sent from there (WARN).
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
    # In-process checks for failcore.run()/guard() (failcore.policy.runtime): files, processes,
    # connections (`network:` besides block_private_resolved) and per-tool output contracts.
    fs: FsRules = DEFAULT_FS_RULES
    exec: ExecRules = DEFAULT_EXEC_RULES
    network: NetRules = DEFAULT_NET_RULES
    tools: Mapping[str, ToolContract] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    # Decisions depend only on (rule, mode), so they are built once here instead of on every request.
    _decision_table: tuple[tuple[Rule, Decision], ...] = field(init=False, repr=False, compare=False)
    _default_decision: Decision = field(init=False, repr=False, compare=False)
    # (host, port, scheme, method) as a request gives them -> the rules that can match it
    # (failcore.policy.decide._candidates fills it; `with_mode` makes a new Policy, so a new one).
    _candidates: dict[tuple[str, int, str, str], tuple[tuple[Rule, Decision], ...]] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        table = tuple((rule, _rule_decision(rule, self.mode)) for rule in self.rules)
        object.__setattr__(self, "_decision_table", table)
        object.__setattr__(self, "_candidates", {})
        default_reason = f"no rule matched; default action {self.default}"
        default_decision = make_decision(self.default, self.mode, None, default_reason)
        object.__setattr__(self, "_default_decision", default_decision)


def _rule_decision(rule: Rule, mode: Mode) -> Decision:
    return make_decision(rule.action, mode, rule.id, rule.reason or f"matched rule '{rule.id}'")


def make_decision(action: Action, mode: Mode, rule_id: str | None, reason: str | None) -> Decision:
    """In observe mode a BLOCK is recorded as WARN with would_block set."""
    blocks = action == "BLOCK"
    if blocks and mode == "observe":
        return Decision("WARN", rule_id, reason, True, action)
    return Decision(action, rule_id, reason, blocks, action)


# --------------------------------------------------------------------------------------------------
# Loading
