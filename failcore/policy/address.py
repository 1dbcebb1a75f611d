"""Host and address spellings as policy rules match them: lower case, no trailing dot or brackets, an IP
literal in any spelling the resolver accepts written canonically. Pure functions, no imports of failcore.
"""

from __future__ import annotations

import functools
import ipaddress


def is_non_global(address: str) -> bool:
    """Whether an address is one `network.block_private_resolved` refuses: anything not globally
    routable (private, loopback, link-local and so cloud metadata, CGNAT, reserved, unspecified),
    judged as every IPv4 address an IPv6 spelling of it carries (mapped, compatible, NAT64, 6to4,
    Teredo), exactly as the runtime's `classify` does."""
    return classify(ipaddress.ip_address(canonical_ip(address) or address)) is not None


def normalise_host(host: str) -> str:
    """A host as policy rules match it: lower case, no trailing dot or brackets, IPs canonical, an
    internationalised name in its ASCII (punycode) form, which is how rules are written."""
    host = host.lower()
    if host.endswith("."):
        host = host.rstrip(".")
    if host.startswith("["):
        host = host.strip("[]")
    if ":" in host or host[:1].isdigit():
        return canonical_ip(host) or host
    if not host.isascii():
        return ascii_host(host)
    return host


# What the kernel connects to for an unspecified address (Linux and macOS reach this host's loopback
# through 0.0.0.0 and `::`), and the loopback addresses `localhost` stands for (RFC 6761, /etc/hosts).
# Every other address of 127.0.0.0/8 reaches a server listening on 0.0.0.0 (Linux routes the whole
# block to `lo`), so it is read as 127.0.0.1 and `localhost` too (not as `::1`: no IPv4 address
# reaches a socket bound to `::1`).
_LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")
_LOOPBACK_V4_READINGS = ("127.0.0.1", "localhost")
_LOOPBACK_READINGS: dict[str, tuple[str, ...]] = {
    "0.0.0.0": ("127.0.0.1", "localhost"),
    "::": ("::1", "localhost"),
    "localhost": ("127.0.0.1", "::1"),
    "127.0.0.1": ("localhost",),
    "::1": ("localhost",),
}


@functools.lru_cache(maxsize=1024)
def loopback_readings(host: str) -> tuple[str, ...]:
    """The other spellings of a host (as a client wrote it) that reach the same loopback address:
    `0.0.0.0` (`0`, `0x0`, …) is also `127.0.0.1` and `localhost`, `::` is `::1` and `localhost`,
    `localhost` (and `*.localhost`) is `127.0.0.1` and `::1`, those two are `localhost`, any other
    address of 127.0.0.0/8 (`127.0.0.2`, `127.1.2.3`, `::ffff:127.0.0.2`) is `127.0.0.1` and
    `localhost`. Empty for any other host (a name is not resolved). Policy decisions judge a host in
    these spellings too, the stricter verdict winning: a reading only ever tightens."""
    host = normalise_host(host)
    if host.endswith(".localhost"):
        return ("localhost", "127.0.0.1", "::1")
    readings = _LOOPBACK_READINGS.get(host)
    if readings is not None:
        return readings
    if host.startswith("127."):
        try:
            if ipaddress.IPv4Address(host) in _LOOPBACK_NET:
                return _LOOPBACK_V4_READINGS
        except ValueError:
            pass
    return ()


@functools.lru_cache(maxsize=1024)
def ascii_host(name: str) -> str:
    """An internationalised host name in its ASCII form, label by label (`bücher.example` ->
    `xn--bcher-kva.example`), with the IDNA codec mitmproxy decodes `xn--` names with (so a name
    mitmproxy shows as Unicode comes back to the spelling the client sent). A label the codec
    refuses is kept as it is."""
    labels = []
    for label in name.split("."):
        if label.isascii():
            labels.append(label)
            continue
        try:
            labels.append(label.encode("idna").decode("ascii").lower())
        except UnicodeError:
            labels.append(label)
    return ".".join(labels)


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


# --------------------------------------------------------------------------------------------------
# Address categories (the in-process SSRF guard, failcore.policy.runtime.check_connect)
# --------------------------------------------------------------------------------------------------

# Address categories, in the order a verdict names the first that applies.
NET_CATEGORIES: tuple[str, ...] = ("metadata", "link_local", "loopback", "private")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Instance metadata services (AWS IMDS incl. IPv6 and the ECS task endpoints, GCP, Azure, OpenStack,
# DigitalOcean, Oracle, Alibaba, Tencent). 169.254.x and fd00:ec2:: are link-local / ULA anyway; listed so
# a policy that allows link-local or private still refuses them.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle, Hetzner
        "169.254.169.253",  # AWS DNS resolver in a VPC
        "169.254.170.2",  # AWS ECS task metadata / credentials
        "169.254.170.23",  # AWS EKS Pod Identity agent
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS EKS Pod Identity agent over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "169.254.0.23",  # Tencent Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
    )
)
METADATA_HOSTS: frozenset[str] = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal",
     "metadata.azure.internal", "metadata.tencentyun.com", "metadata.packet.net"}
)  # fmt: skip

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """An IP or CIDR in any spelling the resolver accepts, or None for a host name."""
    text = text.strip()
    address, slash, bits = text.partition("/")
    canonical = canonical_ip(address)
    if canonical is None:
        return None
    try:
        return ipaddress.ip_network(f"{canonical}/{bits}" if slash else canonical, strict=False)
    except ValueError:
        return None


def embedded_addresses(ip: IPAddress) -> list[IPAddress]:
    """`ip` and every IPv4 address an IPv6 spelling of it carries (mapped, compatible, NAT64, 6to4,
    Teredo server and client)."""
    found: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        value = int(ip)
        if ip.ipv4_mapped is not None:
            found.append(ip.ipv4_mapped)
        if value >> 32 == 0 and value > 1:  # IPv4-compatible ::a.b.c.d (deprecated, still routed by some)
            found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
        if any(ip in net for net in _NAT64):
            found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
        if ip.sixtofour is not None:
            found.append(ip.sixtofour)
        if ip.teredo is not None:
            found.extend(ip.teredo)
    return found


@functools.lru_cache(maxsize=4096)
def classify(ip: IPAddress) -> str | None:
    """The first category of NET_CATEGORIES `ip` (or an address it embeds) falls in; None = public."""
    candidates = embedded_addresses(ip)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    if mapped is not None:
        candidates.extend(embedded_addresses(mapped))
    if any(candidate in METADATA_ADDRESSES for candidate in candidates):
        return "metadata"
    if any(candidate.is_link_local for candidate in candidates):
        return "link_local"
    # The unspecified address reaches this host.
    if any(candidate.is_loopback or candidate.is_unspecified for candidate in candidates):
        return "loopback"
    if any(not candidate.is_global or candidate.is_multicast for candidate in candidates):
        return "private"
    return None


def raw_ipv6(text: str) -> IPAddress | None:
    """An IPv6 literal as written (brackets and zone id dropped), without mapping it to IPv4."""
    text = text.strip().lower().strip("[]")
    if ":" not in text:
        return None
    try:
        return ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return None
