"""Free text in an exchange's event that quotes what the client or the server sent, masked like a body.

Besides headers, bodies and the URL, an event carries strings that quote the exchange: mitmproxy's
error about a malformed request ("Received unknown transfer-encoding header: b'…'"), the method, a
response's reason phrase, a Content-Encoding and the decoder's message about it, the LLM call's model
names, finish reason and service tier as the client or the provider wrote them, the policy's reason
and warnings (a host, an SNI). An internal_error event quotes an exception, whose message can quote a
header, a URL or body bytes (its error, its traceback), and what is known of its exchange. A secret in
any of them is masked there (and recorded as a DLP hit), and so is every echo of the exchange's own
credentials (failcore.evidence.redact).

Pure: runs with the rest of the event's DLP pass, off the hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
# An internal_error event's detail: the traceback's last frames (the message again), and for an
# exchange whose evidence could not be built, its summary. (`where` is failcore's own name for a hook.)
_INTERNAL_ERROR_DETAIL: Final = ("traceback", "summary")


# (the dict or list holding a string, its key or index, where it is for a DLP hit's location)
Field = tuple[Any, Any, str]


def quoted_fields(event: dict[str, Any]) -> list[Field]:
    """(container, key, where) of every non-empty string of the event that may quote the exchange;
    `summary` is left out (it repeats the method and the path, see mask_quoted)."""
    found: list[Field] = []
    _strings(found, event, _EVENT_FIELDS, "")
    for warning in event.get("warnings") or ():
        if isinstance(warning, dict) and isinstance(warning.get("message"), str) and warning["message"]:
            found.append((warning, "message", "warning"))
    for side in ("request", "response"):
        message = event.get(side)
        if isinstance(message, dict):
            _strings(found, message, _MESSAGE_FIELDS, f"{side}.")
            body = message.get("body")
            if isinstance(body, dict):
                _strings(found, body, _BODY_FIELDS, f"{side}.body.")
    llm = event.get("llm")
    if isinstance(llm, dict):
        _strings_in(found, llm, "llm")
    cut = event.get("cut")
    if isinstance(cut, dict):
        _strings(found, cut, ("detail",), "cut.")
    detail = event.get("detail")
    if event.get("kind") == "internal_error" and isinstance(detail, dict):
        _strings(found, detail, _INTERNAL_ERROR_DETAIL, "detail.")
        target = detail.get("target")
        if isinstance(target, dict):
            _strings(found, target, ("host",), "detail.target.")
    return found


def _strings(found: list[Field], container: dict[str, Any], keys: tuple[str, ...], prefix: str) -> None:
    for key in keys:
        value = container.get(key)
        if value and isinstance(value, str):
            found.append((container, key, prefix + key))


def _strings_in(found: list[Field], node: Any, where: str, depth: int = 0) -> None:
    """Every string in a JSON-ready tree (an LLM call's evidence: a few levels deep)."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        if isinstance(value, str):
            if value:
                found.append((node, key, f"{where}.{key}"))
        elif isinstance(value, dict | list) and depth < 4:
            _strings_in(found, value, f"{where}.{key}", depth + 1)


def mask_quoted(
    scanner: DlpScanner,
    event: dict[str, Any],
    out: list[dict[str, Any]],
    record: Callable[[Hit, str], dict[str, Any]],
    echoes: Echoes = None,
) -> None:
    """Mask every secret in the event's quoting strings (quoted_fields) and the summary, with the
    exchange's echoed credentials; `record(hit, where)` makes each hit's record for the `dlp` block."""
    fields = quoted_fields(event)
    summary = event.get("summary")
    texts = [container[key] for container, key, _ in fields]
    if isinstance(summary, str):
        texts.append(summary)
    # They repeat from one exchange to the next (a model name, "stop", "OK"): one scan of them all,
    # found clean before, answers for all of them; each is scanned alone only when that one finds some.
    block = "\n".join(texts)
    if _clean(scanner, block, echoes):
        return
    for container, key, where in fields:
        text = container[key]
        masked, found = masked_prose(scanner, text, echoes)
        if masked != text:
            container[key] = masked
        out.extend(record(h, where) for h in found)
    if isinstance(summary, str) and summary:
        # `METHOD /path` or `CONNECT host:port`: its parts' hits are recorded where they are.
        event["summary"] = masked_prose(scanner, summary, echoes)[0]


def _clean(scanner: DlpScanner, block: str, echoes: Echoes) -> bool:
    """Whether `block` holds no DLP hit, as written or upper-cased, and no echoed credential."""
    if echoes is not None:
        raw = utf8_bytes(block)
        if any(secret in raw for secret in echoes[0]):
            return False
    return not scanner.clean_texts.scan(block) and not scanner.clean_texts.scan(block.upper())


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
