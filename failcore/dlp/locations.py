"""Scan helpers that say where in a request a hit sits (JSON pointer, header, URL part)."""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from urllib.parse import unquote_plus

from failcore.dlp.engine import DlpEngine
from failcore.dlp.escapes import escaped_hits
from failcore.dlp.model import Hit, Scans
from failcore.wiretext import utf8_bytes, wire_text

# Unrolled string pattern: each position is consumed by exactly one branch, so Python `re` stays linear.
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]:,]|-?[0-9][0-9.eE+-]*|true|false|null')


def escape_pointer_token(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


@dataclass(slots=True)
class _Container:
    is_array: bool
    index: int = 0
    raw_key: bytes | None = None
    expecting_key: bool = True

    def segment(self) -> str:
        if self.is_array:
            return str(self.index)
        if self.raw_key is None:
            return ""
        return escape_pointer_token(_key_text(self.raw_key))


def _key_text(raw: bytes) -> str:
    """A key's text: the JSON string token `raw` decoded, or (a token Python's parser refuses, such as
    `"a\\q"` or a raw control character, or one with a lone surrogate no UTF-8 tape can hold) its bytes
    between the quotes as they are, `\\xNN` for a byte that is not UTF-8. Never raises: a hit's
    location must not stop the scan that found it (a hook's error lets the request through)."""
    try:
        text = json.loads(raw.decode("utf-8", "replace"))  # (a str: no guess at UTF-16 or UTF-32)
        if isinstance(text, str):
            text.encode("utf-8")  # a lone surrogate: UnicodeEncodeError
            return text
    except (ValueError, RecursionError):
        pass
    return raw[1:-1].decode("utf-8", "backslashreplace")


def _pointer(stack: list[_Container]) -> str:
    return "".join("/" + container.segment() for container in stack)


def json_scalar_spans(body: bytes, until: int) -> Iterator[tuple[int, int, str]]:
    """(start, end, RFC 6901 pointer) of every scalar token (and object key) starting before `until`."""
    stack: list[_Container] = []
    for match in _JSON_TOKEN.finditer(body):
        start, end = match.span()
        if start >= until:
            return
        first = body[start]
        if first in b"{[":
            stack.append(_Container(is_array=first == ord("[")))
        elif first in b"}]":
            if stack:
                stack.pop()
        elif first == ord(":"):
            if stack:
                stack[-1].expecting_key = False
        elif first == ord(","):
            if stack and stack[-1].is_array:
                stack[-1].index += 1
            elif stack:
                stack[-1].expecting_key = True
        elif stack and not stack[-1].is_array and stack[-1].expecting_key:
            stack[-1].raw_key = match.group(0)
            yield start, end, _pointer(stack)
        else:
            yield start, end, _pointer(stack)


def _looks_like_json(body: bytes) -> bool:
    stripped = body.lstrip()
    return stripped[:1] in (b"{", b"[")


def locate_json_hits(body: bytes, hits: list[Hit]) -> list[Hit]:
    if not hits:
        return []
    if not _looks_like_json(body):
        return [replace(hit, location="body") for hit in hits]
    spans = list(json_scalar_spans(body, max(hit.start for hit in hits) + 1))
    starts = [span[0] for span in spans]
    located: list[Hit] = []
    for hit in hits:
        position = bisect.bisect_right(starts, hit.start) - 1
        location = "body"
        if position >= 0 and spans[position][0] <= hit.start < spans[position][1]:
            location = spans[position][2]
        located.append(replace(hit, location=location))
    return located


# A backslash pair first, so `\\u0041` (a literal backslash, then "u0041") is never read as an escape.
_ASCII_ESCAPE = re.compile(rb"\\\\|\\u00([2-7][0-9a-fA-F])")


def unescape_ascii_json(body: bytes) -> bytes:
    r"""The same JSON with `\u00XX` escapes of printable ASCII written as the characters themselves.

    `"\u0067hp_…"` is a GitHub token to whoever parses the JSON, but not to a pattern: a secret
    escaped this way would pass unseen. `"` and `\` stay escaped, so the JSON means what it meant.
    Bodies that are not JSON, or have no such escape, are returned as they are.
    """
    if b"\\u00" not in body or not _looks_like_json(body):
        return body

    def plain(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code is None:
            return match.group(0)
        char = int(code, 16)
        return match.group(0) if char in (0x22, 0x5C, 0x7F) else bytes([char])

    return _ASCII_ESCAPE.sub(plain, body)


def scan_json_body(engine: DlpEngine, body: bytes) -> list[Hit]:
    r"""Hits carry offsets into `body` and a JSON pointer to the string or number that holds them.
    A body with ASCII `\u00XX` escapes must go through `unescape_ascii_json` first (offsets refer to
    the text scanned)."""
    return locate_json_hits(body, engine.scan(body))


def scan_headers(engine: DlpEngine, headers: list[tuple[str, str]]) -> list[Hit]:
    """Each header is scanned as "name: value" so name-keyed rules apply; offsets are into the value.
    A name or value as mitmproxy decodes it (UTF-8 with surrogateescape) is scanned as its bytes."""
    found: list[Hit] = []
    for name, value in headers:
        prefix = utf8_bytes(f"{name}: ")
        for hit in engine.scan(prefix + utf8_bytes(value)):
            if hit.start >= len(prefix):
                found.append(
                    replace(
                        hit,
                        start=hit.start - len(prefix),
                        end=hit.end - len(prefix),
                        location=f"header:{name.lower()}",
                    )
                )
    return found


def _query_param_spans(url: str) -> list[tuple[int, int, str]]:
    query_start = url.find("?")
    if query_start < 0:
        return []
    fragment = url.find("#", query_start)
    query_end = fragment if fragment >= 0 else len(url)
    spans: list[tuple[int, int, str]] = []
    cursor = query_start + 1
    for part in url[query_start + 1 : query_end].split("&"):
        name = unquote_plus(part.split("=", 1)[0])
        spans.append((len(url[:cursor].encode()), len(url[: cursor + len(part)].encode()), name))
        cursor += len(part) + 1
    return spans


def scan_url(engine: Scans, url: str) -> list[Hit]:
    """Offsets are into the UTF-8 URL; percent-encoded query values are also scanned decoded."""
    params = _query_param_spans(url)
    found: dict[tuple[str, int, int], Hit] = {}
    for hit in engine.scan(url):
        location = "url"
        for start, end, name in params:
            if start <= hit.start < end:
                location = f"query:{name}"
        found[(hit.rule_id, hit.start, hit.end)] = replace(hit, location=location)
    raw = url.encode("utf-8")
    for start, end, name in params:
        value_start = raw.find(b"=", start, end)
        if value_start < 0 or (b"%" not in raw[value_start:end] and b"+" not in raw[value_start:end]):
            continue
        decoded = unquote_plus(raw[value_start + 1 : end].decode("utf-8", errors="replace"))
        for hit in engine.scan(f"{name}={decoded}"):
            # Decoded offsets do not map back byte-for-byte; point at the whole encoded value.
            already = any(
                other.rule_id == hit.rule_id and value_start <= other.start < end for other in found.values()
            )
            if not already:
                found[(hit.rule_id, value_start + 1, end)] = replace(
                    hit, start=value_start + 1, end=end, location=f"query:{name}"
                )
    return sorted(found.values(), key=lambda hit: (hit.start, hit.end, hit.rule_id))


def recorded_header(name: str, value: str) -> tuple[str, str]:
    """A header as the tape records it (failcore.evidence.redact.redact_headers: its name's bytes read
    as latin-1, its value's as UTF-8 with backslashreplace), from mitmproxy's str (UTF-8 with
    surrogateescape)."""
    if name.isascii() and value.isascii():
        return name, value
    return utf8_bytes(name).decode("latin-1"), wire_text(value)


def header_block(pairs: Sequence[tuple[str, str]]) -> tuple[bytes, list[tuple[int, int]]]:
    """A message's headers as one text of "name: value" lines, each ending with a newline (what the
    evidence scan of a header block reads, failcore.evidence.dlp._mask_headers), and the span of
    each value in it."""
    spans = []
    lines = []
    cursor = 0
    for name, value in pairs:
        line = f"{name}: {value}\n".encode()
        lines.append(line)
        spans.append((cursor + len(name.encode()) + 2, cursor + len(line) - 1))
        cursor += len(line)
    return b"".join(lines), spans


def header_block_text(pairs: Sequence[tuple[str, str]]) -> bytes:
    """header_block's text alone (no spans: what a pass that finds nothing needs)."""
    return "".join([f"{name}: {value}\n" for name, value in pairs]).encode()


def scan_header_block(engine: Scans, pairs: Sequence[tuple[str, str]]) -> list[Hit]:
    """The hits of one scan of all `pairs` together (header_block), so a rule keyed by a word anywhere
    in the block (another header's name or value) applies: each hit located `header:NAME`, offsets
    into that value; a hit across lines (a key split over several headers) is one hit in each value
    it covers, cut to that value, as the evidence scan masks it; a hit in names only, once, located
    `header-name` (offsets into the block)."""
    block, spans = header_block(pairs)
    found = engine.scan(block) + escaped_hits(engine, block) if block else []
    if not found:
        return []
    located = [
        replace(
            h,
            start=max(h.start, start) - start,
            end=min(h.end, end) - start,
            location=f"header:{name.lower()}",
        )
        for (name, _), (start, end) in zip(pairs, spans, strict=True)
        for h in found
        if h.start < end and h.end > start
    ]
    # A hit in no value lies in names (a keyword-scoped token sent as a header's name): `header-name`.
    return located + [
        replace(h, location="header-name")
        for h in found
        if not any(h.start < end and h.end > start for start, end in spans)
    ]
