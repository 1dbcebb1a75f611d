"""Readers for one item of a "one value or a list" field (rules' host, port, scheme, method, path; budget
scopes' host, provider, model; redact_headers) and the builders that fold the good items into the
matcher the model keeps. Each reader returns the parsed item, an `Invalid` with the problem's text, or
`ANY` for "*". Pure functions: no YAML positions here (the validator adds them).
"""

from __future__ import annotations

import difflib
import re

import re2

from failcore.policy.address import NET_CATEGORIES, ascii_host, canonical_ip, parse_network
from failcore.policy.glob import GlobError, deny_variants, glob_to_regex, model_glob_to_regex
from failcore.policy.model import LLM_PROVIDERS, SCHEMES, FullMatcher, HostPattern, PathPattern
from failcore.policy.nodes import describe, is_int, quote
from failcore.policy.runtime import ROOT_NAMES
from failcore.policy.validate import ANY, Invalid

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_METHOD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")
_HOST_NAME = re.compile(r"[a-z0-9_\-]+(\.[a-z0-9_\-]+)*")
_GLOB_CHARS = frozenset("*?[")


def host_item(value: object) -> object:
    parsed = host_pattern(value)
    return ANY if parsed == "*" else parsed


def hosts(items: list[str], match_any: bool) -> HostPattern | None:
    if match_any:
        return None
    suffixes = [item for item in items if item.startswith(".")]
    exact = frozenset(item for item in items if not item.startswith("."))
    return HostPattern(exact, tuple(dict.fromkeys(suffixes)))


def port_item(value: object) -> object:
    if not is_int(value):
        return Invalid(
            f"{describe(value)} is not a port number; "
            "write an integer from 1 to 65535 without quotes, e.g. 'port: 443'"
        )
    if not 1 <= value <= 65535:
        return Invalid(f"{value} is out of range; ports are 1 to 65535")
    return int(value)


def scheme_item(value: object) -> object:
    normalised = value.strip().lower() if isinstance(value, str) else None
    if normalised in SCHEMES:
        return normalised
    return Invalid(
        f"{describe(value)} is not a supported scheme; use one of {', '.join(SCHEMES)} (without '://')"
    )


def method_item(value: object) -> object:
    text = value.strip() if isinstance(value, str) else None
    if text == "*":
        return ANY
    if text is not None and _METHOD_NAME.fullmatch(text):
        return text.upper()
    return Invalid(
        f"{describe(value)} is not an HTTP method; write a name such as GET or POST, or '*' for any method"
    )


def header_item(value: object) -> object:
    if isinstance(value, str) and _HEADER_NAME.fullmatch(value.strip()):
        return value.strip().lower()
    return Invalid(
        f"{describe(value)} is not a header name; "
        "write bare names such as x-api-key (no colon, no value, no spaces)"
    )


def frozen_set(items: list, match_any: bool) -> frozenset | None:
    """The items as a set; None (anything) when "*" was among them."""
    return None if match_any else frozenset(items)


def path_item(value: object) -> object:
    """A literal prefix as ("prefix", path), a glob as ("glob", glob, regex)."""
    if not isinstance(value, str):
        return Invalid(f"expected text such as /v1/chat, got {describe(value)}")
    if value in ("*", "**"):
        return ANY
    problem = _path_problem(value)
    if problem is not None:
        return Invalid(problem)
    if _GLOB_CHARS.isdisjoint(value):
        return ("prefix", value)
    try:
        regex_text = glob_to_regex(value)
        re2.compile(regex_text)
    except (GlobError, re2.error) as exc:
        return Invalid(f"bad glob {quote(value)}: {exc}")
    return ("glob", value, regex_text)


def paths(items: list[tuple[str, ...]], match_any: bool) -> PathPattern | None:
    if match_any:
        return None
    prefixes = [item[1] for item in items if item[0] == "prefix"]
    globs = [item for item in items if item[0] == "glob"]
    regex_text = "|".join(f"(?:{item[2]})" for item in globs)
    regex = re2.compile(regex_text) if globs else None
    folded = re2.compile(f"(?i:{regex_text})") if globs else None
    return PathPattern(
        tuple(dict.fromkeys(prefixes)),
        tuple(item[1] for item in globs),
        regex,
        tuple(dict.fromkeys(prefix.lower() for prefix in prefixes)),
        folded,
        any(item != item.lower() for item in (*prefixes, *(item[1] for item in globs))),
    )


def provider_item(value: object) -> object:
    normalised = value.strip().lower() if isinstance(value, str) else None
    if normalised == "*":
        return ANY
    if normalised in LLM_PROVIDERS:
        return normalised
    close = difflib.get_close_matches(normalised or "", LLM_PROVIDERS, n=1)
    hint = f' Did you mean "{close[0]}"?' if close else ""
    return Invalid(
        f"{describe(value)} is not a provider failcore recognises, so the budget would never count "
        f"anything.{hint} Known providers: {', '.join(LLM_PROVIDERS)}"
    )


def model_item(value: object) -> object:
    """A model glob, lower case, as (glob, regex)."""
    text = value.strip().lower() if isinstance(value, str) else ""
    if text == "*":
        return ANY
    if not text or not text.isprintable():
        return Invalid(f"expected a model name or glob such as gpt-4o*, got {describe(value)}")
    try:
        regex_text = model_glob_to_regex(text)
        re2.compile(regex_text)
    except (GlobError, re2.error) as exc:
        return Invalid(f"bad glob {quote(text)}: {exc}")
    return (text, regex_text)


def models(
    items: list[tuple[str, str]], match_any: bool
) -> tuple[tuple[str, ...] | None, FullMatcher | None]:
    if match_any:
        return None, None
    if not items:
        return (), None
    return tuple(glob for glob, _ in items), re2.compile("|".join(f"(?:{regex})" for _, regex in items))


def host_pattern(value: object) -> str | Invalid:
    """Normalised host pattern: "*", ".suffix" for "*.suffix", or an exact lower-case host."""
    if not isinstance(value, str):
        return Invalid(f"expected a host name such as api.openai.com, got {describe(value)}")
    text = value.strip().lower()
    if not text:
        return Invalid(
            "empty host name; write a host such as api.openai.com, "
            "'*.example.com' for its subdomains, or '*' for any host"
        )
    if text == "*":
        return "*"
    if "/" in text:
        return Invalid(
            f"{quote(value)} looks like a URL; write only the host name (e.g. api.openai.com) "
            "and use 'scheme:' and 'path:' for the rest"
        )
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if ":" in name:
        ip = canonical_ip(name)
        if ip is None:
            return Invalid(
                f"{quote(value)} is not a host name; put the port in 'port:' "
                "(e.g. host: api.openai.com with port: 443)"
            )
        return Invalid("wildcards cannot be combined with an IP address") if wildcard else ip
    name = name.rstrip(".")
    if not name.isascii():
        name = ascii_host(name)  # matched as the punycode form the client may send either way
    ip = canonical_ip(name) if name[:1].isdigit() else None
    if ip is not None:
        return Invalid("wildcards cannot be combined with an IP address") if wildcard else ip
    if "*" in name:
        return Invalid(
            f"{quote(value)}: '*' is only allowed as the whole host ('*') or as the first label "
            "('*.example.com', which matches subdomains but not example.com itself)"
        )
    if not _HOST_NAME.fullmatch(name):
        return Invalid(f"{quote(value)} is not a valid host name; use letters, digits, '-' and '.' only")
    return "." + name if wildcard else name


def _path_problem(path: str) -> str | None:
    if not path:
        return "empty path; write a path such as /v1/chat, or remove 'path' to match any path"
    if not (path.startswith("/") or path.startswith("**")):
        return (
            f"{quote(path)} must start with '/' (paths are matched from the root, e.g. /v1/chat); "
            "use '*' to match any path"
        )
    if not path.isprintable() or " " in path:
        return f"{quote(path)} contains spaces or control characters, which never occur in a request path"
    return None


# --------------------------------------------------------------------------------------------------
# The runtime sections: fs, exec, network (in-process connections), tools
# --------------------------------------------------------------------------------------------------


def root_item(value: object) -> object:
    """An fs root: a directory path (absolute, `~/…`, or relative to the working directory) or a
    `$name` of ROOT_NAMES; "*" (or "/") for anywhere."""
    if not isinstance(value, str) or not value.strip():
        return Invalid(f"expected a directory such as '.' or /srv/data, got {describe(value)}")
    text = value.strip()
    if text in ("*", "/"):
        return ANY
    if "\x00" in text or not text.isprintable():
        return Invalid(f"{quote(text)} contains control characters, which a directory name cannot hold")
    if text.startswith("$"):
        if text in ROOT_NAMES:
            return text
        close = difflib.get_close_matches(text, ROOT_NAMES, n=1)
        hint = f' Did you mean "{close[0]}"?' if close else ""
        return Invalid(
            f"{quote(text)} is not a root failcore knows.{hint} Known: {', '.join(ROOT_NAMES)} "
            "(environment variables are not expanded)"
        )
    if not _GLOB_CHARS.isdisjoint(text):
        return Invalid(f"{quote(text)}: a root is a directory, not a glob; put globs in 'fs.deny'")
    return text


def roots(items: list[str], match_any: bool) -> tuple[str, ...]:
    return ("/",) if match_any else tuple(dict.fromkeys(items))


def deny_item(value: object) -> object:
    """A deny glob, checked by compiling it."""
    if not isinstance(value, str) or not value.strip():
        return Invalid(f"expected a path or glob such as ~/.ssh or '*.pem', got {describe(value)}")
    text = value.strip()
    if not text.isprintable():
        return Invalid(f"{quote(text)} contains control characters")
    if ".." in text.split("/"):
        return Invalid(
            f"{quote(text)}: '..' in a deny pattern never matches (paths are resolved first); "
            "write the directory it means"
        )
    try:
        glob_to_regex(text)  # positions in the message count in the text as written
        for variant in deny_variants(text):
            re2.compile(glob_to_regex(variant))
    except (GlobError, re2.error) as exc:
        return Invalid(f"bad glob {quote(text)}: {exc}")
    return text


def texts(items: list[str], match_any: bool) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def program_item(value: object) -> object:
    """A program: a bare name (git) or an absolute path (/usr/bin/git); "*" for any."""
    if not isinstance(value, str) or not value.strip():
        hint = f'; put it in quotes: "{str(value).lower()}"' if isinstance(value, (bool, int, float)) else ""
        return Invalid(
            f"expected a program name such as git or a path such as /usr/bin/git, got {describe(value)}{hint}"
        )
    text = value.strip()
    if text == "*":
        return ANY
    if not text.isprintable() or any(c.isspace() for c in text):
        return Invalid(
            f"{quote(text)} is not a program name; list the program alone (git) and its arguments "
            "under 'exec.args'"
        )
    if "/" in text and not text.startswith("/"):
        return Invalid(
            f"{quote(text)}: a program is a bare name (found in a system bin directory) or an absolute "
            "path; a relative path depends on the working directory"
        )
    return text


def programs(items: list[str], match_any: bool) -> tuple[str, ...] | None:
    return None if match_any else tuple(dict.fromkeys(items))


def program_key(value: object, here: object) -> object:
    parsed = program_item(value)
    if parsed is ANY:
        return Invalid("argument patterns belong to one program; write its name (git), not '*'")
    return parsed


def args_item(value: object) -> object:
    """An argument glob over the arguments joined by spaces ('*' matches anything)."""
    if not isinstance(value, str):
        hint = "; put it in quotes" if isinstance(value, (int, float)) else ""
        return Invalid(f"expected an argument pattern such as 'status*', got {describe(value)}{hint}")
    try:
        re2.compile(model_glob_to_regex(value))
    except (GlobError, re2.error) as exc:
        return Invalid(f"bad glob {quote(value)}: {exc}")
    return value


def net_category_item(value: object) -> object:
    normalised = value.strip().lower().replace("-", "_") if isinstance(value, str) else None
    if normalised in NET_CATEGORIES:
        return normalised
    close = difflib.get_close_matches(normalised or "", NET_CATEGORIES, n=1)
    hint = f' Did you mean "{close[0]}"?' if close else ""
    return Invalid(
        f"{describe(value)} is not an address category.{hint} Use any of {', '.join(NET_CATEGORIES)}"
    )


def net_allow_item(value: object) -> object:
    """An IP or CIDR (any spelling), a host name or a `*.domain` wildcard, stored as NetRules reads it."""
    network = parse_network(value) if isinstance(value, str) else None
    if network is not None:
        return str(network.network_address) if network.num_addresses == 1 else str(network)
    if isinstance(value, str) and "/" in value and canonical_ip(value.split("/", 1)[0]) is not None:
        return Invalid(f"{quote(value)} is not a valid CIDR such as 10.0.0.0/8 or fd00::/8")
    parsed = host_pattern(value)
    if isinstance(parsed, Invalid):
        return parsed
    if parsed == "*":
        return Invalid("'*' would allow every address; remove the categories from 'network.deny' instead")
    return "*" + parsed if parsed.startswith(".") else parsed


def tool_key(value: object, here: object) -> object:
    if isinstance(value, str) and value.strip() and value.isprintable():
        return value.strip()
    return Invalid(f"a tool name must be non-empty text, got {describe(value)}")
