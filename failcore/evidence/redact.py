"""Credentials in evidence: headers that carry one are recorded as a salted fingerprint, and every
copy of an exchange's credentials elsewhere in its event (an upstream echoing a token) is masked.

Pure: bytes and JSON-ready dicts in, the same out; runs wherever evidence is built, off the hooks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Any, Final

from failcore.evidence.quoted import quoted_fields
from failcore.wiretext import utf8_bytes

# Headers whose value names a host: case-insensitive, so DLP scans them upper-cased too (HTTP clients
# lower-case host names, and an AWS key id only matches in upper case).
HOST_HEADERS: Final = frozenset({"host", ":authority"})

# Headers whose value is a credential: recorded only as a salted fingerprint. The common names of API
# and SaaS clients (checked against their documentation): provider keys, session and CSRF tokens.
CREDENTIAL_HEADERS: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "apikey",
        "x-apikey",
        "x-api-token",
        "x-auth-token",
        "x-auth-key",
        "x-access-token",
        "x-session-token",
        "x-csrf-token",
        "x-xsrf-token",
        "x-goog-api-key",
        "x-amz-security-token",
        "x-vault-token",
        "private-token",
        "job-token",
        "x-shopify-access-token",
        "x-figma-token",
        "x-postmark-server-token",
        "x-honeycomb-team",
        "dd-api-key",
        "dd-application-key",
        "x-sentry-auth",
        "x-functions-key",
        "ocp-apim-subscription-key",
        "cf-access-client-secret",
        "x-hasura-admin-secret",
        "x-algolia-api-key",
        "x-riot-token",
        "x-portkey-api-key",
        "x-litellm-api-key",
    }
)
# Schemes worth keeping in clear: they say how a client authenticated without saying with what.
_AUTH_SCHEMES: Final = frozenset({"bearer", "basic", "digest", "token", "negotiate", "aws4-hmac-sha256"})


# A recorded value that is one credential's fingerprint and nothing else (what redact_headers and
# mask_echoed_credentials write): a value that only starts like one is the client's content.
_REDACTION: Final = re.compile(r"\[redacted hmac-sha256:[0-9a-f]{24}\]")


def is_redaction(value: str) -> bool:
    return _REDACTION.fullmatch(value) is not None


def fingerprint(value: bytes, salt: bytes) -> str:
    return "hmac-sha256:" + hmac.new(salt, value, hashlib.sha256).hexdigest()[:24]


def redact_value(name: str, raw: bytes, salt: bytes) -> str:
    scheme, _, rest = raw.partition(b" ")
    if rest and scheme.decode("latin-1").lower() in _AUTH_SCHEMES and name.endswith("authorization"):
        return f"{scheme.decode('latin-1')} [redacted {fingerprint(rest.strip(), salt)}]"
    return f"[redacted {fingerprint(raw, salt)}]"


def redact_headers(
    fields: Iterable[tuple[bytes, bytes]],
    extra: frozenset[str],
    salt: bytes,
    credentials: list[tuple[bytes, bytes]] | None = None,
) -> list[list[str]]:
    """Headers as [name, value] pairs in wire order, credentials replaced by a salted fingerprint.
    The fields that carried one are appended to `credentials`, if given (for credential_values, which
    then needs no pass of its own over every header)."""
    out: list[list[str]] = []
    for raw_name, raw_value in fields:
        name = raw_name.decode("latin-1")
        lower = name.lower()
        if lower in CREDENTIAL_HEADERS or lower in extra:
            out.append([name, redact_value(lower, raw_value, salt)])
            if credentials is not None:
                credentials.append((raw_name, raw_value))
        else:
            out.append([name, raw_value.decode("utf-8", "backslashreplace")])
    return out


# Shorter credential values ("1", "true", a cookie flag) would mask ordinary words.
_MIN_ECHOED = 8


def credential_values(
    fields: Iterable[tuple[bytes, bytes]], extra: frozenset[str] = frozenset()
) -> list[bytes]:
    """The secrets a message's credential headers carry, in the forms an upstream may echo back: the
    whole value, an Authorization token, Basic credentials decoded (and their password), each cookie's
    value. Longest first, so a value is masked before a part of it."""
    found: set[bytes] = set()
    for raw_name, raw_value in fields:
        name = raw_name.decode("latin-1").lower()
        if name not in CREDENTIAL_HEADERS and name not in extra:
            continue
        value = raw_value.strip()
        found.add(value)
        scheme, _, rest = value.partition(b" ")
        if rest.strip() and name.endswith("authorization"):
            token = rest.strip()
            found.add(token)
            if scheme.lower() == b"basic":
                try:
                    decoded = base64.b64decode(token, validate=True)
                except ValueError:
                    decoded = b""
                found.add(decoded)
                found.add(decoded.partition(b":")[2])
        if name in ("cookie", "set-cookie"):
            pairs = value.split(b";") if name == "cookie" else value.split(b";")[:1]
            for pair in pairs:
                _, eq, cookie = pair.partition(b"=")
                if eq:
                    found.add(cookie.strip().strip(b'"'))
    variants = set(found)
    for secret in found:
        if b"/" in secret:
            variants.add(secret.replace(b"/", b"\\/"))  # as JSON encoders that escape "/" write it
    return sorted((s for s in variants if len(s) >= _MIN_ECHOED), key=len, reverse=True)


def mask_echoes(data: bytes, secrets: list[bytes], salt: bytes) -> bytes:
    """Every copy of `secrets` (credential_values) in `data` replaced by its fingerprint."""
    for secret in secrets:
        if secret in data:
            plain = secret.replace(b"\\/", b"/")
            data = data.replace(secret, f"[redacted {fingerprint(plain, salt)}]".encode())
    return data


def mask_echoed_credentials(event: dict[str, Any], secrets: list[bytes], salt: bytes) -> None:
    """Mask, in a built exchange event, every copy of the exchange's credentials outside the headers
    (or trailers) that carried them (already redacted): an upstream echoing a Bearer token, a cookie
    or Basic credentials in its response body or headers, or a client repeating one in a body, the path
    or any other string that quotes the exchange (failcore.evidence.quoted: an error, a model name); in a
    WebSocket message event, those of its upgrade request and response, in the message."""
    if not secrets:
        return
    for side in ("request", "response"):
        message = event.get(side)
        if not message:
            continue
        for pair in (*message.get("headers", []), *message.get("trailers", [])):
            if not is_redaction(pair[1]):
                pair[1] = mask_echoes(pair[1].encode("utf-8"), secrets, salt).decode("utf-8", "replace")
        _mask_body_echoes(message.get("body"), secrets, salt)
    if event.get("kind") == "websocket" and isinstance(detail := event.get("detail"), dict):
        _mask_body_echoes(detail.get("body"), secrets, salt)  # a message over the upgraded connection
    own = [(event, key, key) for key in ("path", "summary") if isinstance(event.get(key), str)]
    for container, key, _ in [*own, *quoted_fields(event)]:
        raw = utf8_bytes(container[key])
        masked = mask_echoes(raw, secrets, salt)
        if masked != raw:
            container[key] = masked.decode("utf-8", "replace")


def _mask_body_echoes(body: dict[str, Any] | None, secrets: list[bytes], salt: bytes) -> None:
    body = body or {}
    if "text" in body:
        body["text"] = mask_echoes(body["text"].encode("utf-8"), secrets, salt).decode("utf-8", "replace")
    elif "b64" in body:
        raw = base64.b64decode(body["b64"])
        masked = mask_echoes(raw, secrets, salt)
        if masked != raw:
            body["b64"] = base64.b64encode(masked).decode("ascii")
