"""Loading a policy: read the file (UTF-8), parse the YAML keeping positions (ruamel.yaml round-trip),
validate it against the schema and build the model. Every problem is reported in one pass as `file:line:col:
message`, sorted by position; a policy with any problem is refused as a whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from failcore.policy.model import MODES, Policy, PolicyError, PolicyProblem
from failcore.policy.nodes import Problems, describe, node_pos
from failcore.policy.schema import POLICY
from failcore.policy.validate import FAILED, Here, read_section


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
    policy = _parse(text, source, hashlib.sha256(data).hexdigest(), Path(path).parent)
    # The policy file is hot reloaded: a guarded tool that could rewrite it would pick its own rules.
    protected = dataclasses.replace(policy.fs, protect=(os.path.realpath(path),))
    return dataclasses.replace(policy, fs=protected)


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
    problems = Problems(source)
    document = _load_yaml(text, problems)
    if problems:
        raise PolicyError(problems.items)
    if not isinstance(document, CommentedMap):
        position = node_pos(document) if isinstance(document, CommentedSeq) else (1, 1)
        got = "an empty file" if document is None else describe(document)
        problems.add(position, f"a policy must be a mapping of settings such as 'mode: observe'; got {got}")
        raise PolicyError(problems.items)
    arguments = read_section(POLICY, Here(problems, base_dir, document, ""))
    if problems or arguments is FAILED:
        raise PolicyError(sorted(problems.items, key=lambda problem: (problem.line, problem.column)))
    assert isinstance(arguments, dict)
    return Policy(source=source, sha256=digest, **arguments)


def _load_yaml(text: str, problems: Problems) -> object:
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
