"""Free text in an exchange's event that quotes what the client or the server sent, masked like a body.

Besides headers, bodies and the URL, an event carries strings that quote the exchange: mitmproxy's
error about a malformed request ("Received unknown transfer-encoding header: b'…'"), the method, a
response's reason phrase, a Content-Encoding and the decoder's message about it, the LLM call's model
names, finish reason and service tier as the client or the provider wrote them, the policy's reason
and warnings (a host, an SNI). A secret in any of them is masked there (and recorded as a DLP hit),
and so is every echo of the exchange's own credentials (failcore.evidence.redact).

Pure: runs with the rest of the event's DLP pass, off the hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from failcore.dlp import Hit, mask_text
from failcore.evidence.echoes import echo_spans, mask_with_echoes, not_echoed
from failcore.evidence.echoes import redacted as _redacted
from failcore.wiretext import utf8_bytes

if TYPE_CHECKING:
    from failcore.dlp.scanner import DlpScanner

# The exchange's own credentials (credential_values) and the salt of their fingerprints, or None.
Echoes = tuple[Sequence[bytes], bytes] | None

_EVENT_FIELDS: Final = ("error", "method", "reason")
_MESSAGE_FIELDS: Final = ("reason", "http_version")
_BODY_FIELDS: Final = ("encoding", "decode_error")


# (the dict or list holding a string, its key or index, where it is for a DLP hit's location)
Field = tuple[Any, Any, str]


def quoted_fields(event: dict[str, Any]) -> Iterator[Field]:
    """(container, key, where) of every non-empty string of the event that may quote the exchange;
    `summary` is left out (it repeats the method and the path, see mask_quoted)."""
    for key in _EVENT_FIELDS:
        yield from _string(event, key, key)
    for warning in event.get("warnings") or ():
        if isinstance(warning, dict):
            yield from _string(warning, "message", "warning")
    for side in ("request", "response"):
        message = event.get(side)
        if not isinstance(message, dict):
            continue
        for key in _MESSAGE_FIELDS:
            yield from _string(message, key, f"{side}.{key}")
        body = message.get("body")
        if isinstance(body, dict):
            for key in _BODY_FIELDS:
                yield from _string(body, key, f"{side}.body.{key}")
    llm = event.get("llm")
    if isinstance(llm, dict):
        yield from _strings_in(llm, "llm")
    cut = event.get("cut")
    if isinstance(cut, dict):
        yield from _string(cut, "detail", "cut.detail")


def _string(container: dict[str, Any], key: str, where: str) -> Iterator[Field]:
    value = container.get(key)
    if isinstance(value, str) and value:
        yield container, key, where


def _strings_in(node: Any, where: str, depth: int = 0) -> Iterator[Field]:
    """Every string in a JSON-ready tree (an LLM call's evidence: a few levels deep)."""
    if depth > 4:
        return
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if isinstance(value, str):
            if value:
                yield node, key, f"{where}.{key}"
        elif isinstance(value, dict | list):
            yield from _strings_in(value, f"{where}.{key}", depth + 1)


def mask_quoted(
    scanner: DlpScanner,
    event: dict[str, Any],
    out: list[dict[str, Any]],
    record: Callable[[Hit, str], dict[str, Any]],
    echoes: Echoes = None,
) -> None:
    """Mask every secret in the event's quoting strings (quoted_fields) and the summary, with the
    exchange's echoed credentials; `record(hit, where)` makes each hit's record for the `dlp` block."""
    for container, key, where in list(quoted_fields(event)):
        text = container[key]
        masked, found = masked_prose(scanner, text, echoes)
        if masked != text:
            container[key] = masked
        out.extend(record(h, where) for h in found)
    summary = event.get("summary")
    if isinstance(summary, str) and summary:
        # `METHOD /path` or `CONNECT host:port`: its parts' hits are recorded where they are.
        event["summary"] = masked_prose(scanner, summary, echoes)[0]


def masked_prose(scanner: DlpScanner, text: str, echoes: Echoes = None) -> tuple[str, list[Hit]]:
    """(`text` with every DLP hit in it, as written or upper-cased, and every echoed credential
    masked; the hits that are not an echoed credential)."""
    texts = scanner.clean_texts  # a model name or a reason repeats from one exchange to the next
    found = texts.scan(text)
    raw = utf8_bytes(text)
    if not found:
        upper = text.upper()
        found = texts.scan(upper)
        if found and utf8_bytes(upper) != raw.upper():
            # Not an ASCII case mapping: no byte offsets into `text` to mask at.
            return _redacted(found), found
    spans = echo_spans(raw, echoes[0], echoes[1]) if echoes is not None else []
    if spans:
        found = not_echoed(found, spans)
        return mask_with_echoes(raw, found, spans).decode("utf-8", "replace"), found
    if not found:
        return text, found
    return mask_text(text, found), found
