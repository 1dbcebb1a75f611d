"""Method overrides a request's body asks for: a `_method` field in a POST form (Rails'
Rack::MethodOverride, Laravel, Symfony) or in a POST's JSON object (Laravel reads a JSON body as the
request's fields, and Symfony's `getMethod()` takes `_method` from them). Pure parsing; the gate judges
each method found (failcore.proxy.gate) and the hold keeps such a body until it can (failcore.proxy.hold).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_to_bytes

import orjson
from mitmproxy import http

from failcore.evidence import (
    ON_LOOP_DECODE_LIMIT,
    body_encoding,
    decode_body,
    decoded_size_at_most,
    read_off_loop,
)
from failcore.policy.decide import METHOD_OVERRIDE_PARAMETER
from failcore.policy.model import Policy

# Rack's multipart boundary (Rack::Multipart::MULTIPART): any multipart/* type, the boundary quoted or not,
# either case (the last `boundary=` in the header, as Rack's greedy `.*` takes it).
_MULTIPART = re.compile(r'\Amultipart/.*boundary="?([^";,]+)"?', re.IGNORECASE | re.DOTALL)
# A part's name, read conservatively (an attacker picks the server's parser): a `name=` or `name*=`
# (RFC 5987) parameter anywhere in any head line, in either case, with or without a `;` before it, quoted
# (closed or not) or bare, inside another quoted value too (the matches overlap). Rack 2's unanchored
# `Content-Disposition:.*\s+name=` also reads `X-Content-Disposition:` and `form-data<TAB>name=`; Rack 3
# a parameter after a quoted one with no `;`.
# A value is read up to 64 bytes (a longer one is no `_method`): the overlapping matches stay linear.
_PART_NAME = re.compile(
    rb'(?<![a-z0-9])(?=name(\*?)[ \t]*=[ \t]*(?:"((?:\\.|[^"\\\r\n]){0,64})|([^;\s"=]{0,64})))',
    re.IGNORECASE,
)
# Rack 3 names a part without Content-Disposition by its Content-ID (MULTIPART_CONTENT_ID).
_PART_ID = re.compile(rb"^content-id[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)
# A folded head line (obs-fold) continues on the next line: Rack 3 reads it as one value.
_FOLD = re.compile(rb"\r?\n[ \t]+")


def part_names(head: bytes) -> set[bytes]:
    """Every name a multipart part's `head` can be read as: each name parameter in any head line (its
    value quoted with `\\` escapes as written and unescaped, or bare) and its Content-ID."""
    head = _FOLD.sub(b" ", head)
    names = set()
    for extended, quoted, bare in _PART_NAME.findall(head):
        values = {quoted, re.sub(rb"\\(.)", rb"\1", quoted)} if quoted else {bare}
        if extended:  # charset'language'percent-encoded
            values = {unquote_to_bytes(value.rpartition(b"'")[2]) for value in values}
        names.update(value.strip() for value in values)
    names.update(value.strip().strip(b'"<>').strip() for value in _PART_ID.findall(head))
    return names


def is_form(content_type: str | None) -> bool:
    """Whether a POST with this Content-Type is one Rack reads form fields from: none, urlencoded or any
    multipart/* type (Rack's form_data? and parseable_data?)."""
    ctype = (content_type or "").strip().lower()
    return not ctype or ctype.startswith(("application/x-www-form-urlencoded", "multipart/"))


def is_json(content_type: str | None) -> bool:
    """Whether Laravel reads a body with this Content-Type as JSON (`Request::isJson`: the type contains
    `/json` or `+json`)."""
    ctype = (content_type or "").lower()
    return "/json" in ctype or "+json" in ctype


def multipart_values(content_type: str, body: bytes, name: str) -> list[bytes]:
    """The values of every part of a multipart body named `name` (conservatively: a part whose head
    names it in any spelling Rack 2 or 3, PHP or Python accept; see part_names), per the boundary Rack
    reads from `content_type`; [] when it has none."""
    found = _MULTIPART.match(content_type.strip())
    if found is None:
        return []
    wanted = name.encode("latin-1")
    values = []
    for part in body.split(b"--" + found.group(1).encode("utf-8", "surrogateescape"))[1:]:
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            head, sep, content = part.partition(b"\n\n")
        if wanted in part_names(head.lstrip(b"\r\n")):
            values.append(content.removesuffix(b"\n").removesuffix(b"\r"))
    return values


def body_override_methods(req: http.Request, policy: Policy) -> list[str]:
    """The methods a buffered POST asks the server to run in a `_method` field of its form (Rails'
    Rack::MethodOverride, Laravel, Symfony) or of its JSON object (Laravel), upper case. Rack reads a
    POST without Content-Type as a form too, and any multipart/* type. A streamed body (forwarded
    before the decision; see failcore.proxy.hold) or a content-coded one is not read (the frameworks
    parse form fields from the body as sent, not decompressed). One under a transfer coding (`gzip,
    chunked`, forwarded gzip'd by mitmproxy) is read as sent and as its receiver reads it, inflated
    (RFC 9112 6.1): each method either names is judged; one that inflates past ON_LOOP_DECODE_LIMIT
    cannot be read whole, and may name any method a rule of `policy` names."""
    body = override_body(req)
    return [] if body is None else methods_in_body(body, policy)


@dataclass(frozen=True, slots=True)
class OverrideBody:
    """What body_override_methods reads of a request, taken on the event loop (methods_in_body may
    then run in a worker thread)."""

    content_type: str
    raw: bytes
    transfer_codings: str | None

    def decodes_off_loop(self) -> bool:
        """Whether inflating its transfer coding is left to a worker thread: it is large on the wire, or
        inflates past what a plain body is read up to on the loop (probed that far, no further)."""
        codings = self.transfer_codings
        if codings is None:
            return False
        if read_off_loop(len(self.raw), codings, OFF_LOOP_BYTES):
            return True
        return decoded_size_at_most(self.raw, codings, OFF_LOOP_BYTES + 1) > OFF_LOOP_BYTES


# As DLP's blocking scan (failcore.proxy.dlpguard.SCAN_OFF_LOOP_BYTES).
OFF_LOOP_BYTES = 64 * 1024


def override_body(req: http.Request) -> OverrideBody | None:
    """The body body_override_methods reads, or None when it reads none."""
    if req.method != "POST" or req.stream or not req.raw_content:
        return None
    if req.headers.get("content-encoding", "identity").strip().lower() != "identity":
        return None
    codings = body_encoding(None, req.headers.get("transfer-encoding"))
    return OverrideBody(req.headers.get("content-type", ""), req.raw_content, codings or None)


def methods_in_body(body: OverrideBody, policy: Policy) -> list[str]:
    """body_override_methods over what override_body took (no mitmproxy object: any thread)."""
    methods = _override_methods(body.content_type, body.raw)
    if body.transfer_codings:
        # Inflated up to ON_LOOP_DECODE_LIMIT (Rack's query parser reads no urlencoded form past 4 MiB,
        # its bytesize_limit; but Laravel reads a JSON body whole), in a worker thread past
        # OFF_LOOP_BYTES of wire (OverrideBody.decodes_off_loop).
        decoded = decode_body(body.raw, body.transfer_codings, ON_LOOP_DECODE_LIMIT)
        methods += _override_methods(body.content_type, decoded.data)
        if decoded.over_limit:
            methods += sorted({method for rule in policy.rules for method in rule.methods or ()})
    return list(dict.fromkeys(methods))


def _override_methods(ctype: str, body: bytes) -> list[str]:
    """The `_method` values a body of Content-Type `ctype` names (body_override_methods)."""
    if is_json(ctype):
        return json_override_methods(body)
    if not is_form(ctype):
        return []
    if ctype.strip().lower().startswith("multipart/"):
        parts = multipart_values(ctype, body, METHOD_OVERRIDE_PARAMETER)
        values = [value.decode("latin-1") for value in parts]
    else:
        pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True)
        values = [value for key, value in pairs if key == METHOD_OVERRIDE_PARAMETER]
    return [method for value in values if (method := value.strip().upper())]


def names_a_method(policy: Policy) -> bool:
    """Whether a rule of `policy` names methods: then a `_method` form field can change a verdict."""
    return any(rule.methods is not None for rule in policy.rules)


def json_override_methods(body: bytes) -> list[str]:
    """Every top-level `_method` string of a JSON object body (each duplicate key's too: PHP keeps the
    last, other parsers the first), upper case; [] for anything that is not a JSON object."""
    if METHOD_OVERRIDE_PARAMETER.encode() not in body:
        if b"\\u" not in body:
            return []  # the key cannot be spelled but with `\\u` escapes
        # Spelled with escapes, or not there (most bodies with escapes: JSON written by Python's json):
        # orjson (C) reads the same top-level keys as Python's parser, whose per-object hook (all
        # duplicates kept) costs 3x as much (190 ms for a 7 MiB prompt), held on the event loop.
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # (NaN, a lone surrogate, UTF-16: what orjson refuses, Python's parser may read)
        else:
            if not isinstance(doc, dict) or METHOD_OVERRIDE_PARAMETER not in doc:
                return []
    try:
        top = json.loads(body, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return []
    if not isinstance(top, _Pairs):
        return []
    values = [value for key, value in top if key == METHOD_OVERRIDE_PARAMETER and isinstance(value, str)]
    return [method for value in values if (method := value.strip().upper())]


class _Pairs(list):
    """A JSON object as its (key, value) pairs in order, duplicates kept."""
