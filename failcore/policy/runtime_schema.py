"""The schema of the sections the runtime API checks (`fs`, `exec`, `tools`) and of `network` (the
proxy's `block_private_resolved` plus in-process connections), walked by `validate.read_section` like
the rest of `schema.py`; they build the rules of `failcore.policy.runtime`.
"""

from __future__ import annotations

import difflib
import os
from types import MappingProxyType

from ruamel.yaml.comments import CommentedMap

from failcore.policy import values
from failcore.policy.contracts import OUTPUT_KINDS, ToolContract
from failcore.policy.nodes import describe, key_pos
from failcore.policy.runtime import DEFAULT_NET_DENY, ExecRules, FsRules, NetRules
from failcore.policy.runtime_env import JUDGED_ENV, judged_env_entry
from failcore.policy.validate import Choice, Each, Field, Flag, Here, Invalid, MapOf, Section

# --------------------------------------------------------------------------------------------------
# fs, exec, tools: the runtime API's in-process checks (failcore.policy.runtime)
# --------------------------------------------------------------------------------------------------


def _working_directory() -> str | None:
    """Where relative fs roots are anchored: the working directory when the policy is loaded."""
    try:
        return os.getcwd()
    except OSError:  # removed under us: each check's cwd is used instead
        return None


FS = Section(
    fields=(
        Field("read", Each(values.root_item, values.roots, empty_ok=True), default=("/",)),
        Field("write", Each(values.root_item, values.roots, empty_ok=True), default=("/",)),
        Field("deny", Each(values.deny_item, values.texts, empty_ok=True), default=()),
    ),
    where="in the fs section",
    key_word="setting names",
    not_mapping="expected a mapping such as 'write: [.]', got {got}",
    build=lambda v, here: FsRules(
        read=v["read"], write=v["write"], deny=v["deny"], base=_working_directory()
    ),  # type: ignore[arg-type]
)


def _check_exec(v: dict[str, object], here: Here) -> None:
    listed = v.get("programs")
    args = here.node.get("args")
    if not isinstance(listed, tuple) or not isinstance(args, CommentedMap):
        return
    for program in args:
        if isinstance(values.program_key(program, here), str) and program not in listed:
            here.add(
                key_pos(args, program),
                f"{here.prefix}args: {program} is not in 'exec.programs', so it can never run; "
                "add it there or remove its patterns",
            )


def _env_name(value: object) -> object:
    """A variable of JUDGED_ENV a child may be given a new value of (exec.env): a name, a pattern of
    ENV_PATTERNS (or GIT_TRACE*), or a name one of them covers."""
    if isinstance(value, str) and (value in JUDGED_ENV or judged_env_entry(value) is not None):
        return value
    # Names differ by case (ld_preload is not LD_PRELOAD), the hint does not: the likely typo is named.
    folded = {name.lower(): name for name in JUDGED_ENV}
    close = difflib.get_close_matches(value.lower() if isinstance(value, str) else "", folded, n=1)
    hint = f' Did you mean "{folded[close[0]]}"?' if close else ""
    return Invalid(
        f"{describe(value)} is not a variable failcore judges in a child's environment.{hint} "
        f"Use any of {', '.join(JUDGED_ENV)}"
    )


EXEC = Section(
    fields=(
        Field("allow_shell", Flag(), default=False),
        Field("programs", Each(values.program_item, values.programs), default=None),
        Field("env", Each(_env_name, values.texts, empty_ok=True), default=()),
        Field(
            "args",
            MapOf(
                values.program_key,
                Each(values.args_item, values.texts),
                "expected a mapping of program to argument patterns such as "
                "'{{git: [status*, diff*]}}', got {got}",
            ),
            default=MappingProxyType({}),
        ),
    ),
    where="in the exec section",
    key_word="setting names",
    not_mapping="expected a mapping such as 'allow_shell: false', got {got}",
    check=_check_exec,
    build=lambda v, here: ExecRules(
        programs=v["programs"],  # type: ignore[arg-type]
        args=v["args"],  # type: ignore[arg-type]
        allow_shell=v["allow_shell"],  # type: ignore[arg-type]
        env=v["env"],  # type: ignore[arg-type]
    ),
)

TOOL = Section(
    fields=(
        Field(
            "output",
            Choice(OUTPUT_KINDS, "{got} is not an output kind; use json (a dict, list or JSON text) or text"),
            required="missing required key 'output'; add e.g. 'output: json' (json or text)",
            null="check",
        ),
    ),
    where="in a tool contract",
    key_word="contract keys",
    not_mapping="expected a mapping such as '{{output: json}}', got {got}",
    build=lambda v, here: ToolContract(output=v["output"]),  # type: ignore[arg-type]
)

TOOLS = MapOf(
    values.tool_key,
    TOOL,
    "expected a mapping of tool name to contract such as 'search: {{output: json}}', got {got}",
)


def _network(v: dict[str, object], here: Here) -> tuple[bool, NetRules]:
    rules = NetRules(
        deny=v["deny"],  # type: ignore[arg-type]
        allow=v["allow"],  # type: ignore[arg-type]
        default=v["default"],  # type: ignore[arg-type]
        system_resolvers=bool(v["system_resolvers"]),
    )
    return bool(v["block_private_resolved"]), rules


NETWORK = Section(
    fields=(
        Field("block_private_resolved", Flag(), default=False),
        Field("deny", Each(values.net_category_item, values.texts, empty_ok=True), default=DEFAULT_NET_DENY),
        Field("allow", Each(values.net_allow_item, values.texts, empty_ok=True), default=()),
        Field(
            "default",
            Choice(("ALLOW", "BLOCK"), "{got} is not valid; use ALLOW or BLOCK", upper=True),
            default="ALLOW",
            null="check",
        ),
        Field("system_resolvers", Flag(), default=True),
    ),
    where="in the network section",
    key_word="setting names",
    not_mapping="expected a mapping such as 'block_private_resolved: true', got {got}",
    build=_network,
    prefix_key_problems=False,
)
