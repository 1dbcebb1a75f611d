"""Which bytes of a credential header are the header's own credential (pure): a DLP hit inside them is
what the header is for (host rules decide where it may go); a hit anywhere else in the header is a
secret riding along (failcore.evidence.dlp.foreign_credential_hits)."""

from __future__ import annotations

import re

# Rules for what a session cookie legitimately is: a hit of one of these spanning a whole cookie value
# is that cookie, not a secret smuggled in it.
SESSION_RULES = frozenset({"jwt", "generic-api-key-assignment", "generic-secret-assignment"})

# Authorization schemes whose credential is one token (AWS SigV2's `AWS AKID:signature` included).
_TOKEN_SCHEMES = frozenset({"bearer", "basic", "token", "apikey", "key", "aws", "negotiate", "ntlm", "dpop"})
# Schemes whose credential is a list of `name=value` parameters, and the parameters that carry it.
_CREDENTIAL_PARAMETERS = {
    "aws4-hmac-sha256": frozenset({"credential", "signature"}),
    "digest": frozenset({"username", "response", "nonce", "cnonce", "opaque"}),
    "oauth": frozenset({"oauth_consumer_key", "oauth_token", "oauth_signature", "oauth_nonce"}),
    "signature": frozenset({"keyid", "signature"}),
    "mac": frozenset({"id", "mac", "nonce"}),
}
_PARAMETER = re.compile(rb'([A-Za-z0-9_.-]+)[ \t]*=[ \t]*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def own_spans(name: str, value: str) -> list[tuple[int, int]]:
    """Byte spans of a credential header's value that are the header's own credential: a hit inside
    one of an Authorization header's, or equal to a single-value header's, is that credential.
    Authorization: the one token after a token scheme (Bearer, Basic, …) or after a scheme this does
    not know (`Custom x AKIA…`: `x`); the credential parameters' values of a parameterised scheme
    (SigV4's Credential and Signature, Digest's response, …) — any other text is foreign."""
    raw = value.encode("utf-8")
    if name not in ("authorization", "proxy-authorization"):
        stripped = raw.strip()
        start = raw.find(stripped) if stripped else 0
        return [(start, start + len(stripped))]
    scheme, sep, _ = value.partition(" ")
    if not sep:
        return [(0, len(raw))]
    start = len(scheme.encode()) + 1
    while start < len(raw) and raw[start : start + 1] == b" ":
        start += 1
    wanted = _CREDENTIAL_PARAMETERS.get(scheme.lower())
    if wanted is not None:
        spans = []
        for found in _PARAMETER.finditer(raw, start):
            if found.group(1).decode("ascii").lower() in wanted:
                group = 2 if found.group(2) is not None else 3
                spans.append((found.start(group), found.end(group)))
        return spans
    end = start
    while end < len(raw) and raw[end : end + 1] not in (b" ", b",", b"\t"):
        end += 1
    return [(start, end)]


def cookie_value_spans(value: str) -> list[tuple[int, int]]:
    raw = value.encode("utf-8")
    spans = []
    cursor = 0
    for part in raw.split(b";"):
        eq = part.find(b"=")
        if eq >= 0:
            start = cursor + eq + 1
            end = cursor + len(part)
            spans.append((start, end))
        cursor += len(part) + 1
    return spans
