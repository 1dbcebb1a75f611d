"""Host and address spellings as policy rules match them: lower case, no trailing dot or brackets, an IP
literal in any spelling the resolver accepts written canonically. Pure functions, no imports of failcore.
"""

from __future__ import annotations

import functools
import ipaddress


def is_non_global(address: str) -> bool:
    """Whether an address is one `network.block_private_resolved` refuses: anything not globally
    routable (private, loopback, link-local and so cloud metadata, CGNAT, reserved, unspecified),
    an IPv4-mapped IPv6 address judged as its IPv4 address."""
    ip = ipaddress.ip_address(canonical_ip(address) or address)
    return not ip.is_global or ip.is_multicast


def normalise_host(host: str) -> str:
    """A host as policy rules match it: lower case, no trailing dot or brackets, IPs canonical."""
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
