"""The request's header block as the evidence scan reads it, for the blocking DLP scan
(failcore.proxy.dlpguard): which headers it holds and as what (block_pairs), which header alone is one
line of it, and its hits, credentials echoed in other headers masked as the evidence masks them."""

from __future__ import annotations

from collections.abc import Sequence

from failcore.dlp import Hit
from failcore.dlp.locations import recorded_header, scan_header_block
from failcore.dlp.model import Scans
from failcore.evidence import CREDENTIAL_HEADERS
from failcore.evidence.redact import credential_values, is_redaction, mask_echoes, redact_value
from failcore.wiretext import utf8_bytes


def recorded_name(name: str) -> str:
    """A header's name lower-cased as the tape records it (its bytes as latin-1): `str.lower()` of
    mitmproxy's text would also fold a KELVIN SIGN into a `k`."""
    return (name if name.isascii() else name.encode("utf-8", "surrogateescape").decode("latin-1")).lower()


def _echo_secrets(
    headers: Sequence[tuple[str, str]], redacted: frozenset[str], echoes: bool | None = None
) -> list[bytes]:
    """The request's credentials its other headers may echo (credential_values, which reads only
    credential and `redacted` headers: none without one). `echoes`: whether there is one, when the
    caller knows."""
    if echoes is None:
        echoes = any(
            recorded_name(n) in CREDENTIAL_HEADERS or recorded_name(n) in redacted for n, _ in headers
        )
    if echoes:
        return credential_values([(utf8_bytes(n), utf8_bytes(v)) for n, v in headers], redacted)
    return []


def block_pairs(
    headers: Sequence[tuple[str, str]],
    redacted: frozenset[str],
    salt: bytes = b"",
    secrets: Sequence[bytes] = (),
    lowered: Sequence[str] | None = None,
) -> list[tuple[str, str]]:
    """The headers the evidence scan reads as one block (failcore.evidence.dlp._mask_headers), as the
    tape records them: all but credential headers and a value that is one fingerprint as recorded
    (is_redaction: the policy's `redact_headers` are recorded with `salt` as one, or as a scheme then
    one, `Bearer [redacted …]`, for a name ending in "authorization"). `secrets`: the request's own
    credentials (_echo_secrets) echoed in other headers masked with `salt`, as the evidence also reads
    them (mask_echoed_credentials: a header echoing the Authorization token drops out of the block).
    `lowered`: each name's recorded_name, in order (at least one per header), when the caller has them."""
    pairs = []
    names = [recorded_name(name) for name, _ in headers] if lowered is None else lowered
    for (name, value), lower in zip(headers, names, strict=False):
        if lower in CREDENTIAL_HEADERS:
            continue
        if lower in redacted:
            pair = (recorded_header(name, "")[0], redact_value(lower, utf8_bytes(value), salt))
            if not _is_redaction(pair[1]):
                pairs.append(pair)
            continue
        pair = recorded_header(name, value)
        if secrets:
            masked = mask_echoes(pair[1].encode("utf-8"), list(secrets), salt)
            pair = (pair[0], masked.decode("utf-8", "replace"))
        if not _is_redaction(pair[1]):
            pairs.append(pair)
    return pairs


def _is_redaction(value: str) -> bool:
    # (is_redaction's pattern is one fingerprint, `[redacted hmac-sha256:…]`, whole: it starts so.)
    return value.startswith("[redacted hmac-sha256:") and is_redaction(value)


def lines_of_block(
    headers: Sequence[tuple[str, str]], lowered: Sequence[str], redacted: frozenset[str]
) -> list[bool]:
    """Whether each (non-credential) header scanned alone (scan_headers: `name: value`) is byte for
    byte one line of the header block (block_pairs, header_block): ASCII (recorded as it is), no
    newline, not one of the policy's `redact_headers` and not a fingerprint (both recorded otherwise).
    `lowered`: their recorded names (recorded_name; an ASCII name's is its str.lower())."""
    return [
        name.isascii()
        and value.isascii()
        and "\n" not in name
        and "\n" not in value
        and lower not in redacted
        and not _is_redaction(value)
        for (name, value), lower in zip(headers, lowered, strict=False)
    ]


def header_block_hits(
    engine: Scans,
    headers: Sequence[tuple[str, str]],
    redacted: frozenset[str],
    salt: bytes = b"",
    pairs: list[tuple[str, str]] | None = None,
    lines_clean: bool = False,
    echoes: bool | None = None,
) -> list[Hit]:
    """The hits of the evidence's one scan of a request's header block (block_pairs): the block as
    sent and, when the request's credentials echo in its other headers, the block as the evidence
    reads it once they are masked with `salt` (which can join what an echo sat between; the block as
    sent keeps what the echo masks would hide, a keyword say). `pairs`: block_pairs(headers, redacted,
    salt) when the caller has it; `lines_clean`: the block as sent is known to have no hit; `echoes`:
    whether a credential or `redacted` header is among `headers` (_echo_secrets), when known."""
    if pairs is None:
        pairs = block_pairs(headers, redacted, salt)
    hits = [] if lines_clean else scan_header_block(engine, pairs)
    secrets = _echo_secrets(headers, redacted, echoes) if salt else []
    if secrets:
        echoed = block_pairs(headers, redacted, salt, secrets)
        if echoed != pairs:
            hits = hits + scan_header_block(engine, echoed)
    return hits
