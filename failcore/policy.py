"""YAML policy engine: validate policy files and decide ALLOW / WARN / BLOCK for each request.

Everything that can be computed at load time is (lower-cased sets, globs compiled to RE2 regexes,
ready-made Decision objects), so `decide` only does set lookups and at most one regex match per rule.
Path globs use RE2 because request paths come from the agent and must not be able to trigger
catastrophic backtracking.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import re2
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

Action = Literal["ALLOW", "WARN", "BLOCK"]
Mode = Literal["observe", "enforce"]

ACTIONS: tuple[Action, ...] = ("ALLOW", "WARN", "BLOCK")
MODES: tuple[Mode, ...] = ("observe", "enforce")
SCHEMES: tuple[str, ...] = ("http", "https", "ws", "wss")
SUPPORTED_VERSION = 1

TOP_LEVEL_KEYS: tuple[str, ...] = (
    "version", "description", "mode", "default", "fail_open", "redact_headers", "rules",
)
RULE_KEYS: tuple[str, ...] = ("id", "host", "port", "scheme", "method", "path", "action", "reason")
# Accepting these silently would let an operator believe a budget or DLP scan is active when it is not.
RESERVED_KEYS: tuple[str, ...] = ("budgets", "dlp", "prices")

DEFAULT_POLICY_PATH: Path = Path(__file__).resolve().parent.parent / "policies" / "default.yaml"
PACKAGED_DEFAULT_POLICY_PATH: Path = Path(__file__).resolve().parent / "data" / "default_policy.yaml"

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
class Policy:
    source: str
    mode: Mode
    default: Action
    fail_open: bool
    redact_headers: frozenset[str]
    rules: tuple[Rule, ...]
    sha256: str
    description: str | None = None
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


def default_policy_path() -> Path:
    """The repository's policies/default.yaml, or the copy shipped inside the package when installed."""
    if DEFAULT_POLICY_PATH.is_file():
        return DEFAULT_POLICY_PATH
    return PACKAGED_DEFAULT_POLICY_PATH


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    return _parse(text, source, hashlib.sha256(text.encode("utf-8")).hexdigest())


def load_policy(path: str | os.PathLike[str]) -> Policy:
    source = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PolicyError([PolicyProblem(source, 0, 0, f"cannot read policy file: {reason}")]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        message = f"the file is not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the policy as UTF-8 text"
        raise PolicyError([PolicyProblem(source, line, column, message)]) from None
    return _parse(text, source, hashlib.sha256(data).hexdigest())


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


def _parse(text: str, source: str, digest: str) -> Policy:
    problems = _Problems(source)
    document = _load_yaml(text, problems)
    if problems:
        raise PolicyError(problems.items)
    if not isinstance(document, CommentedMap):
        position = _node_pos(document) if isinstance(document, CommentedSeq) else (1, 1)
        got = "an empty file" if document is None else _describe(document)
        problems.add(position, f"a policy must be a mapping of settings such as 'mode: observe'; got {got}")
        raise PolicyError(problems.items)
    policy = _PolicyReader(document, problems).read(source, digest)
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
    return f'unknown key {_quote(key)} {where}.{hint} Allowed keys: {", ".join(allowed)}'


def _parse_action(value: object) -> Action | None:
    if isinstance(value, str):
        upper = value.strip().upper()
        for action in ACTIONS:
            if action == upper:
                return action
    return None


class _PolicyReader:
    """Walks the top-level mapping, recording every problem instead of stopping at the first."""

    def __init__(self, document: CommentedMap, problems: _Problems) -> None:
        self.document = document
        self.problems = problems

    def read(self, source: str, digest: str) -> Policy | None:
        self._check_keys()
        self._check_version()
        description = self._read_description()
        mode = self._read_mode()
        default = self._read_default()
        fail_open = self._read_fail_open()
        redact_headers = self._read_redact_headers()
        rules = self._read_rules()
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
        )

    def _check_keys(self) -> None:
        for key in self.document:
            position = _key_pos(self.document, key)
            if not isinstance(key, str):
                self.problems.add(position, f"setting names must be text, got {_describe(key)}")
            elif key in RESERVED_KEYS:
                self.problems.add(
                    position,
                    f'"{key}" is not supported yet by this version of failcore; remove the "{key}" section '
                    "(it would be ignored, so nothing it describes would be enforced)",
                )
            elif key not in TOP_LEVEL_KEYS:
                self.problems.add(position, _unknown_key_message(key, TOP_LEVEL_KEYS, "at the top level"))

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
        value = self.node["id"]
        if isinstance(value, str) and value.strip() and value.isprintable():
            self.label = f"rule {self.index + 1} ({value})"
            return value
        hint = f'; put it in quotes: id: "{value}"' if isinstance(value, (int, float)) else ""
        self._add(_value_pos(self.node, "id"), f"id: expected non-empty text, got {_describe(value)}{hint}")
        return default_id

    def _check_keys(self) -> None:
        for key in self.node:
            position = _key_pos(self.node, key)
            if not isinstance(key, str):
                self._add(position, f"rule keys must be text, got {_describe(key)}")
            elif key not in RULE_KEYS:
                self._add(position, _unknown_key_message(key, RULE_KEYS, "in a rule"))

    def _read_action(self) -> Action | None:
        if "action" not in self.node:
            self._add(_node_pos(self.node), "missing required key 'action'; add e.g. 'action: BLOCK' "
                      "(one of ALLOW, WARN, BLOCK)")
            return None
        value = self.node["action"]
        action = _parse_action(value)
        if action is None:
            self._add(_value_pos(self.node, "action"),
                      f"action: {_describe(value)} is not a valid action; use ALLOW, WARN or BLOCK")
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
                self._add(position, f"port: {_describe(value)} is not a port number; "
                          "write an integer from 1 to 65535 without quotes, e.g. 'port: 443'")
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
                self._add(position, f"scheme: {_describe(value)} is not a supported scheme; "
                          f"use one of {', '.join(SCHEMES)} (without '://')")
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
                self._add(position, f"method: {_describe(value)} is not an HTTP method; "
                          "write a name such as GET or POST, or '*' for any method")
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


@dataclass(frozen=True, slots=True)
class _Invalid:
    message: str


def _parse_host_pattern(value: object) -> str | _Invalid:
    """Normalised host pattern: "*", ".suffix" for "*.suffix", or an exact lower-case host."""
    if not isinstance(value, str):
        return _Invalid(f"expected a host name such as api.openai.com, got {_describe(value)}")
    text = value.strip().lower()
    if not text:
        return _Invalid("empty host name; write a host such as api.openai.com, "
                        "'*.example.com' for its subdomains, or '*' for any host")
    if text == "*":
        return "*"
    if "/" in text:
        return _Invalid(f"{_quote(value)} looks like a URL; write only the host name (e.g. api.openai.com) "
                        "and use 'scheme:' and 'path:' for the rest")
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if ":" in name:
        try:
            name = ipaddress.IPv6Address(name).compressed
        except ValueError:
            return _Invalid(f"{_quote(value)} is not a host name; put the port in 'port:' "
                            "(e.g. host: api.openai.com with port: 443)")
        return _Invalid("wildcards cannot be combined with an IP address") if wildcard else name
    name = name.rstrip(".")
    if "*" in name:
        return _Invalid(f"{_quote(value)}: '*' is only allowed as the whole host ('*') or as the first label "
                        "('*.example.com', which matches subdomains but not example.com itself)")
    if not _HOST_NAME.fullmatch(name):
        return _Invalid(f"{_quote(value)} is not a valid host name; use letters, digits, '-' and '.' only")
    return "." + name if wildcard else name


def _path_problem(path: str) -> str | None:
    if not path:
        return "empty path; write a path such as /v1/chat, or remove 'path' to match any path"
    if not (path.startswith("/") or path.startswith("**")):
        return (f"{_quote(path)} must start with '/' (paths are matched from the root, e.g. /v1/chat); "
                "use '*' to match any path")
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


def _translate_class(glob: str, start: int) -> tuple[str, int]:
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
        raise GlobError(f"the '[' at character {start + 1} is never closed; "
                        "add the missing ']' or write '[[]' to match a literal '['")
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
        return "[^" + "".join(items) + _regex_literal("/") + "]", index + 1
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
            reason = (f"rule '{rule.id}' allows some requests to {host}:{port}; "
                      "each request is checked when it arrives")
            return _make_decision(rule.action, policy.mode, rule.id, reason)
    return policy._default_decision


def _normalise_host(host: str) -> str:
    host = host.lower()
    if host.endswith("."):
        host = host.rstrip(".")
    if host.startswith("["):
        host = host.strip("[]")
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            return host
    return host


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
