"""In-process checks for the runtime API (`failcore.run` / `failcore.guard`): files, processes and
connections (a tool's output contract: failcore.policy.contracts). Pure functions over frozen rules; the
runtime calls them from its audit hook and applies strict/observe itself.

- `check_fs`: the path is made absolute against `cwd` and resolved with `os.path.realpath` (so `..`,
  symlinked parents, dangling symlinks and `/proc/self/root` are followed to where the kernel would go),
  then tested against the deny globs and the read or write roots by path components (`/srv/app-evil` is
  not under `/srv/app`).
- `check_exec`: shell invocations (`sh -c`, `bash`, `env bash -c`, `os.system`, `shell=True`, …) are
  refused unless `allow_shell`; the program must be listed (a bare name, or a file by that name in a system
  bin directory; anything else only by absolute path), judged by the file the spawn will run (found on
  the child's own PATH, from the directory it starts in); per-program argument globs.
- `check_connect`: the resolved address is classified (metadata, link_local, loopback, private) after
  unwrapping every spelling that carries an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo,
  inet_aton forms); denied categories are refused unless an `allow` entry names the address.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from failcore.policy.address import (
    METADATA_HOSTS,
    NET_CATEGORIES,
    canonical_ip,
    classify,
    parse_network,
    raw_ipv6,
)
from failcore.policy.glob import compile_deny, model_glob_to_regex

# --------------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Literal["ALLOW", "BLOCK"]  # the policy's opinion; strict/observe is applied by the runtime
    rule: str | None  # e.g. "fs.write_outside_roots", "fs.deny_glob", "exec.shell", "net.metadata"
    reason: str | None  # human sentence, no secrets


ALLOWED = Verdict("ALLOW", None, None)

# Roots: a path ("/srv/data", "~/work", "." = the working directory, relative = under it) or one of these
# names, which stand for directories found at check time.
ROOT_NAMES: tuple[str, ...] = ("$python", "$tmp")
# Read-only operations; every other operation (write, delete, rename, mkdir, chmod, symlink, an unknown
# name…) needs a write root.
READ_OPS: frozenset[str] = frozenset({"read", "list", "stat", "open_read", "exec", "import", "readlink"})


@dataclass(frozen=True, slots=True)
class FsRules:
    """`read` / `write`: roots (a write root may also be read); `("/",)` = anywhere. `deny`: globs refused
    for every operation, matched against the resolved path and each of its parent directories (so a
    directory pattern covers what is inside it), case-insensitively. A glob without '/' matches a name
    at any depth (`.env`, `*.pem`); `~` is the home directory; `*` stays in one path segment, `**`
    crosses segments. `base`: the directory relative roots are relative to (a loaded policy sets it to
    the working directory at load time, so a tool that calls os.chdir("/") does not move "." with it);
    None = the `cwd` each check is given."""

    read: tuple[str, ...] = ("/",)
    write: tuple[str, ...] = ("/",)
    deny: tuple[str, ...] = ()
    base: str | None = None
    # Files no operation but reading may touch (nor their directories), resolved: load_policy puts the
    # policy file itself here (a tool that could rewrite it would change the rules at the next reload).
    protect: tuple[str, ...] = ()
    _deny_regex: object | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_deny_regex", compile_deny(self.deny))

    def denies(self, path: str) -> bool:
        """Whether `path` (absolute, resolved) or one of its parent directories matches a deny glob."""
        regex = self._deny_regex
        return regex is not None and regex.fullmatch(path) is not None  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class ExecRules:
    """`programs`: None = any program; else bare names (matched against a bare program name, or a file of
    that name in a system bin directory) and absolute paths (matched after resolving symlinks).
    `args`: program → globs over its arguments joined by single spaces (`*` matches anything, spaces too);
    a program listed there must match one. `allow_shell`: let shell invocations run. `env`: names of
    CODE_ENV a child's environment may set to a new value."""

    programs: tuple[str, ...] | None = None
    args: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    allow_shell: bool = True
    # Variables of CODE_ENV a child's environment may set to a value of the agent's (see check_exec_env).
    env: tuple[str, ...] = ()
    _args_regex: Mapping[str, object] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.args:
            return
        import re2

        compiled = {
            name: re2.compile("|".join(f"(?:{model_glob_to_regex(glob)})" for glob in globs))
            for name, globs in self.args.items()
        }
        object.__setattr__(self, "_args_regex", MappingProxyType(compiled))


# Address categories, in the order a verdict names the first that applies.
DEFAULT_NET_DENY: tuple[str, ...] = NET_CATEGORIES


@dataclass(frozen=True, slots=True)
class NetRules:
    """`deny`: address categories refused (metadata, link_local, loopback, private). `allow`: IPs, CIDRs
    and host names let through even so (a host name never unlocks a metadata address: a name's
    resolution is not the policy's to trust). `default`: what an address no category covers gets."""

    deny: tuple[str, ...] = DEFAULT_NET_DENY
    allow: tuple[str, ...] = ()
    default: Literal["ALLOW", "BLOCK"] = "ALLOW"
    # Let DNS through to the name servers the system is configured with (their addresses, port 53
    # only, TCP or UDP), whatever category they are in: a loopback stub resolver such as 127.0.0.53.
    system_resolvers: bool = True
    _allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        default=(), init=False, repr=False, compare=False
    )
    _allow_hosts: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        hosts: list[str] = []
        for entry in self.allow:
            network = parse_network(entry)
            if network is not None:
                networks.append(network)
            else:
                hosts.append(entry.strip().lower().rstrip("."))
        object.__setattr__(self, "_allow_networks", tuple(networks))
        object.__setattr__(self, "_allow_hosts", tuple(hosts))

    def allows_address(
        self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, single: bool = False
    ) -> bool:
        """Whether an allow entry covers `ip`; with `single`, only an entry naming exactly it."""
        return any(
            ip.version == net.version and ip in net and (not single or net.num_addresses == 1)
            for net in self._allow_networks
        )

    def allows_host(self, host: str) -> bool:
        for pattern in self._allow_hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]):
                    return True
            elif host == pattern:
                return True
        return False


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def resolve_path(path: str | bytes | os.PathLike[str] | os.PathLike[bytes], cwd: str) -> str:
    """Where the kernel would go: absolute against `cwd`, every symlink (dangling ones too) and `..`
    followed. Raises ValueError for a path with a NUL byte."""
    text = os.fsdecode(path)
    if "\x00" in text:
        raise ValueError("embedded null byte")
    return os.path.realpath(os.path.join(cwd, text))


def resolve_root(root: str, cwd: str) -> tuple[str, ...]:
    """The resolved directories a root stands for. Resolved once per (root, cwd, home) and kept: a root
    the agent replaces by a symlink later (or creates as one) keeps meaning the directory it first
    named."""
    home = os.environ.get("HOME", "") if root.startswith("~") else ""
    return _resolve_root(root, cwd, home)


@functools.lru_cache(maxsize=256)
def _resolve_root(root: str, cwd: str, home: str) -> tuple[str, ...]:
    if root == "$python":
        return _python_roots()
    if root == "$tmp":
        import tempfile

        return (os.path.realpath(tempfile.gettempdir()),)
    return (os.path.realpath(os.path.join(cwd, os.path.expanduser(root))),)


def _python_roots() -> tuple[str, ...]:
    """The interpreter's own files: stdlib, site-packages, prefixes (imports read them)."""
    import sysconfig

    places = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths = sysconfig.get_paths()
    places.update(paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths)
    return tuple(sorted({os.path.realpath(place) for place in places if place}))


def is_within(path: str, root: str) -> bool:
    """Containment by path components: both are absolute, resolved paths."""
    if root == "/":
        return path.startswith("/")
    return path == root or path.startswith(root + "/")


def check_fs(rules: FsRules, op: str, path: str, *, cwd: str) -> Verdict:
    """Whether `op` on `path` (relative to `cwd`) is allowed. Any op outside READ_OPS counts as a write."""
    if isinstance(path, int):  # an already open descriptor: checked when it was opened
        return ALLOWED
    writing = op not in READ_OPS
    if (
        rules._deny_regex is None
        and "/" in rules.write
        and "/" in rules.read
        and not (writing and rules.protect)
    ):
        return ALLOWED  # nothing to resolve
    try:
        resolved = resolve_path(path, cwd)
    except (ValueError, TypeError):
        return Verdict("BLOCK", "fs.bad_path", f"{op}: the path is not a valid file name")
    # The file itself, or a directory above it (renaming or removing that would replace the file too).
    if writing and any(is_within(protected, resolved) for protected in rules.protect):
        return Verdict("BLOCK", "fs.policy_file", f"{op} {resolved}: the policy in force is not writable")
    if rules.denies(resolved):
        return Verdict("BLOCK", "fs.deny_glob", f"{op} {resolved}: the path matches a denied pattern")
    roots = rules.write if writing else tuple(dict.fromkeys(rules.read + rules.write))
    if "/" in roots:
        return ALLOWED
    for root in roots:
        if any(is_within(resolved, place) for place in resolve_root(root, rules.base or cwd)):
            return ALLOWED
    kind = "write" if writing else "read"
    return Verdict(
        "BLOCK",
        f"fs.{kind}_outside_roots",
        f"{op} {resolved}: outside the {kind} roots ({', '.join(roots) or 'none'})",
    )


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------

SHELLS: frozenset[str] = frozenset(
    {"sh", "bash", "dash", "zsh", "ksh", "mksh", "pdksh", "oksh", "yash", "ash", "csh", "tcsh", "fish",
     "rc", "es", "xonsh", "nu", "elvish", "pwsh", "powershell", "cmd", "rbash",
     # Listed in /etc/shells on Debian; they run the command lines they are given through a shell.
     "tmux", "screen"}
)  # fmt: skip
# Programs that run their arguments as another command: looked through when spotting a shell.
_WRAPPERS: frozenset[str] = frozenset(
    {"env", "nohup", "nice", "ionice", "timeout", "stdbuf", "setsid", "sudo", "doas", "chrt", "taskset",
     "time", "command", "exec", "busybox", "xargs", "unbuffer", "chroot", "strace", "ltrace", "find"}
)  # fmt: skip
# Programs that hand their command to a shell themselves (`watch CMD`, `su -c CMD`, `script -c CMD`,
# `flock F -c CMD`, `ssh HOST CMD` on the remote side, GNU parallel, at/batch): shells for this purpose.
_SHELL_RUNNERS: frozenset[str] = frozenset(
    {"watch", "su", "runuser", "script", "flock", "ssh", "parallel", "at", "batch"}
)
# What a word after a wrapper must name to count (not at/batch: common words such as `find -name at`).
_WRAPPED_SHELLS: frozenset[str] = SHELLS | (_SHELL_RUNNERS - {"at", "batch"})
# sudo/doas options that start the user's shell.
_SHELL_OPTIONS: frozenset[str] = frozenset({"-s", "-i", "--shell", "--login"})
SYSTEM_BIN_DIRS: tuple[str, ...] = (
    "/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/local/sbin", "/opt/homebrew/bin",
)  # fmt: skip


def program_name(program: str) -> str:
    """A program's file name, lower case, without a Windows `.exe`, nor a version suffix for shells
    (`bash5.2` → `bash`)."""
    name = os.path.basename(program.rstrip("/")).lower().removesuffix(".exe")
    if name in SHELLS:
        return name
    stripped = name.rstrip("0123456789.")
    return stripped if stripped in SHELLS else name


def is_shell_command(program: str, argv: Sequence[str]) -> bool:
    """Whether running `program` with `argv` hands a command line to a shell: the program is a shell or
    runs its command through one (watch, su -c, ssh, …), or a wrapper (env, nohup, timeout, xargs,
    find -exec, busybox, sudo, …) runs one."""
    name = program_name(program)
    first = program_name(argv[0]) if argv else name
    if {name, first} & (SHELLS | _SHELL_RUNNERS):
        return True
    if name not in _WRAPPERS and first not in _WRAPPERS:
        return False
    for word in argv[1:]:
        if word in _SHELL_OPTIONS and {name, first} & {"sudo", "doas"}:
            return True
        # `env -S "sh -c id"` / `--split-string=sh -c id` make one word a command line: its first token.
        value = word.split("=", 1)[1] if word.startswith("-") and "=" in word else word
        if value.startswith("-") or not value.strip():
            continue
        if program_name(value.split(None, 1)[0]) in _WRAPPED_SHELLS:
            return True
    return False


def find_program(program: str, path: Sequence[str] | None = None, cwd: str | None = None) -> str | None:
    """The file a spawn of `program` runs, as the child will find it: a name with '/' is that file
    (relative to `cwd`); a bare name is the first executable file of that name in the directories of
    `path` (the child's search path, `os.get_exec_path(env)` of the env it gets; None = this process's
    PATH; an empty or relative entry is relative to `cwd`, where the child starts). None when there is
    no such file. `cwd` None = this process's working directory."""
    base = os.getcwd() if cwd is None else cwd
    if "/" in program:
        return os.path.join(base, program)
    for directory in os.get_exec_path() if path is None else path:
        candidate = os.path.join(base, directory, program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _system_bin_dir(directory: str) -> bool:
    if directory.rstrip("/") in SYSTEM_BIN_DIRS:
        return True
    real = os.path.realpath(directory)
    return any(real == os.path.realpath(place) for place in SYSTEM_BIN_DIRS)


def _program_listed(rules: ExecRules, program: str, found: str | None) -> str | None:
    """The entry of `rules.programs` that admits `program` (found at `found`, the file the spawn will
    run), or None. A bare name is admitted only when the spawn finds it in a system bin directory (an
    agent that puts its own directory first on the child's PATH gets no `git` of its own)."""
    assert rules.programs is not None
    if found is None:
        return None
    name = program_name(program)
    resolved = os.path.realpath(found)
    directory = os.path.dirname(found)
    for entry in rules.programs:
        if "/" in entry:
            if found == entry or resolved == os.path.realpath(entry):
                return entry
        elif entry.lower() == name and _system_bin_dir(directory):
            return entry
    return None


def check_exec(
    rules: ExecRules,
    program: str,
    argv: Sequence[str],
    *,
    shell: bool,
    path: Sequence[str] | None = None,
    cwd: str | None = None,
) -> Verdict:
    """Whether the runtime may start `program` with `argv` (argv[0] included); `shell` is true for
    `os.system`, `os.popen` and `shell=True`. `path` and `cwd`: where the spawn looks for `program` and
    where the child starts (see `find_program`); the program is judged by the file found there."""
    if rules.allow_shell and rules.programs is None and not rules.args:
        return ALLOWED  # no section: nothing to check
    program = os.fsdecode(program)
    argv = [os.fsdecode(word) for word in argv]
    name = program_name(program) if program else ""
    if shell or is_shell_command(program, argv):
        if not rules.allow_shell:
            return Verdict(
                "BLOCK",
                "exec.shell",
                f"{name or 'a shell'}: shell command lines are refused (exec.allow_shell is false)",
            )
        if rules.programs is None or name in SHELLS or shell:
            return ALLOWED
    if rules.programs is not None:
        found = find_program(program, path, cwd)
        entry = _program_listed(rules, program, found)
        if entry is None:
            where = f" ({found})" if found is not None and found != program else ""
            return Verdict("BLOCK", "exec.program", f"{name}{where}: not among the allowed programs")
    else:
        entry = None
    regex = rules._args_regex.get(entry or "") or rules._args_regex.get(name)
    if regex is not None:
        tail = " ".join(argv[1:])
        if regex.fullmatch(tail) is None:  # type: ignore[attr-defined]
            return Verdict("BLOCK", "exec.args", f"{name}: arguments match none of the allowed patterns")
    return ALLOWED


# --------------------------------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------------------------------


DNS_PORT = 53


def nameservers(text: str) -> frozenset[str]:
    """The addresses (canonical) of the `nameserver` lines of a resolv.conf(5) text; a zone index
    (`fe80::1%eth0`) is dropped, anything that is not an address is skipped."""
    found = set()
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            address = canonical_ip(words[1].split("%", 1)[0])
            if address is not None:
                found.add(address)
    return frozenset(found)


def check_connect(
    rules: NetRules,
    host: str | None,
    address: str,
    port: int,
    *,
    resolvers: frozenset[str] = frozenset(),
) -> Verdict:
    """Whether an in-process connection to `address` (the IP actually connected to; `host`, the name the
    code asked for, when known) is allowed. `address` should be an IP literal (any spelling): a name is
    judged only as far as it needs no resolution (metadata names, `localhost`), any other name is
    refused (`net.unresolved`), since what it resolves to at connect time is unknown here. `resolvers`:
    the system's name servers (see `nameservers`), reached on port 53 when `rules.system_resolvers`."""
    text = str(address)
    name = (host or "").strip().lower().rstrip(".")
    canonical = canonical_ip(text)
    if port == DNS_PORT and rules.system_resolvers and canonical is not None and canonical in resolvers:
        return Verdict("ALLOW", "net.system_resolver", f"{canonical}:53 is a name server of the system")
    if canonical is None:
        unresolved = text.strip().lower().rstrip(".")
        if unresolved in METADATA_HOSTS:
            category = "metadata"
        elif unresolved == "localhost" or unresolved.endswith(".localhost"):
            category = "loopback"
        else:
            return Verdict(
                "BLOCK", "net.unresolved", f"{text:.80}:{port}: not an IP address; resolve it first"
            )
        if category not in rules.deny or (category == "loopback" and rules.allows_host(unresolved)):
            return ALLOWED
        return Verdict(
            "BLOCK", f"net.{category}", f"{unresolved:.80}:{port}: {_CATEGORY_TEXT[category]} address"
        )
    ip = ipaddress.ip_address(canonical)
    # canonical_ip writes a mapped address as its IPv4 one; the original spelling is judged (it embeds it).
    raw = raw_ipv6(text) or ip
    shown = name or (f"[{canonical}]" if ":" in canonical else canonical)
    target = f"{shown}:{port}"
    category = "metadata" if name in METADATA_HOSTS else classify(raw)
    if category is not None and category in rules.deny:
        if category == "metadata":
            # Only an allow entry naming this very address unlocks a metadata service, not a wider
            # CIDR written to admit link-local or private addresses, nor a host name.
            if rules.allows_address(ip, single=True) or rules.allows_address(raw, single=True):
                return ALLOWED
        elif rules.allows_address(ip) or rules.allows_address(raw) or (name and rules.allows_host(name)):
            return ALLOWED
        reason = f"{target}: {_CATEGORY_TEXT[category]} address ({canonical})"
        return Verdict("BLOCK", f"net.{category}", reason)
    if category is None and rules.default == "BLOCK":
        if rules.allows_address(ip) or rules.allows_address(raw) or (name and rules.allows_host(name)):
            return ALLOWED
        return Verdict("BLOCK", "net.not_allowed", f"{target}: not in network.allow ({canonical})")
    return ALLOWED


_CATEGORY_TEXT = {
    "metadata": "a cloud metadata service",
    "link_local": "a link-local",
    "loopback": "a loopback (this host)",
    "private": "a private or reserved",
}


# What a policy without the section gets: everything allowed but the address categories of DEFAULT_NET_DENY.
DEFAULT_FS_RULES = FsRules()
DEFAULT_EXEC_RULES = ExecRules()
DEFAULT_NET_RULES = NetRules()
