"""DLP in evidence: every hit in a built event is masked (the tape never holds the secret) and listed
in the event's `dlp` block, with a warning unless the policy ALLOWs that rule.

Pure and off the hooks: runs where the event is built (see failcore.evidence.exchange). The DLP guard
(failcore.proxy.dlpguard) uses the header scanners here for its decisions too.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson

from failcore.dlp import (
    DlpEngine,
    Hit,
    mask_bytes,
    mask_text,
    scan_headers,
    scan_json_body,
    scan_url,
    taint_source,
    unescape_ascii_json,
)
from failcore.dlp.escapes import escaped_hits
from failcore.dlp.model import Scans
from failcore.dlp.scanner import SEVERITY_RANK
from failcore.evidence.echoes import echo_spans, mask_with_echoes, not_echoed
from failcore.evidence.echoes import redacted as _redacted
from failcore.evidence.hostnames import host_hits as host_hits
from failcore.evidence.hostnames import host_spellings as host_spellings
from failcore.evidence.hostnames import spelling_hits
from failcore.evidence.ownspans import SESSION_RULES, cookie_value_spans, own_spans
from failcore.evidence.quoted import mask_quoted, quoted_fields
from failcore.evidence.redact import (
    CREDENTIAL_HEADERS,
    HOST_HEADERS,
    is_redaction,
    mask_echoed_credentials,
    mask_echoes,
)
from failcore.evidence.straddle import mask_straddles
from failcore.evidence.straddle import mask_straddling as mask_straddling
from failcore.wiretext import utf8_bytes

if TYPE_CHECKING:
    from failcore.dlp.scanner import DlpScanner
    from failcore.evidence.pastcap import PastCapScan

# The exchange's own credentials (credential_values) and the salt of their fingerprints, or None.
Echoes = tuple[Sequence[bytes], bytes] | None


def _hit_record(scanner: DlpScanner, hit: Hit, where: str) -> dict[str, Any]:
    return {
        "rule": hit.rule_id,
        "severity": hit.severity,
        "category": hit.category,
        "location": _location(where, hit.location),
        "preview": hit.preview,
        "fingerprint": hit.fingerprint,
        "action": scanner.action(hit),
        "taint_source": None,
    }


def _located(record: dict[str, Any], location: str) -> dict[str, Any]:
    record["location"] = location
    return record


def _location(where: str, located: str | None) -> str:
    """request.body:/json/pointer, request.query:NAME, request.url, request.header:NAME …"""
    if not located or located == "body":
        return where
    if where == "request":
        return f"request.{located}"
    return f"{where}:{located}"


def foreign_credential_hits(engine: DlpEngine, headers: list[tuple[str, str]]) -> list[Hit]:
    """Secrets in credential headers that are not the header's own credential: an AWS key in a Cookie,
    a key appended after a Bearer token. A key that *is* the Authorization/X-Api-Key value is what
    the header is for (the host rules decide where it may go) and is not reported here."""
    found: list[Hit] = []
    for name, value in headers:
        lower = name.lower()
        if lower not in CREDENTIAL_HEADERS:
            continue
        for hit in scan_headers(engine, [(name, value)]) + _escaped_value_hits(engine, name, value):
            if lower in ("cookie", "set-cookie"):
                whole = any(
                    value.encode()[s:e].strip() == value.encode()[hit.start : hit.end]
                    for s, e in cookie_value_spans(value)
                )
                if whole and hit.rule_id in SESSION_RULES:
                    continue
            elif lower.endswith("authorization"):
                if any(s <= hit.start and hit.end <= e for s, e in own_spans(lower, value)):
                    continue
            elif (hit.start, hit.end) in own_spans(lower, value):
                continue
            found.append(hit)
    return found


def _escaped_value_hits(engine: Scans, name: str, value: str) -> list[Hit]:
    """escaped_hits of a recorded "name: value" line that lie in the value, offsets into the value."""
    prefix = len(f"{name}: ".encode())
    found = escaped_hits(engine, f"{name}: {value}") if "\\" in value else []
    return [replace(h, start=h.start - prefix, end=h.end - prefix) for h in found if h.start >= prefix]


def header_name_hits(engine: Scans, names: Sequence[str], where: str = "header-name") -> list[Hit]:
    """Secrets spelled as header names (`X-AKIA…: 1`): every name is scanned, alone on its line."""
    # One scan of all names, one per line; names are case-insensitive (HTTP/2 lower-cases them), so the
    # upper-cased names are scanned too: an AWS key id is upper-case.
    encoded = [name.encode("utf-8", "surrogateescape") for name in names]
    joined = b"\n".join(encoded)
    if not joined:
        return []
    seen = {(h.rule_id, h.start, h.end): h for h in engine.scan(joined)}
    if joined.upper() != joined:
        for h in engine.scan(joined.upper()):
            seen.setdefault((h.rule_id, h.start, h.end), h)
    if not seen:
        return []
    found: list[Hit] = []
    line_start = 0
    for raw in encoded:
        line_end = line_start + len(raw)
        found.extend(
            replace(h, start=h.start - line_start, end=h.end - line_start, location=where)
            for h in seen.values()
            if line_start <= h.start and h.end <= line_end
        )
        line_start = line_end + 1
    return found


def _mask_body(
    scanner: DlpScanner,
    body: dict[str, Any] | None,
    where: str,
    out: list[dict[str, Any]],
    echoes: Echoes = None,
) -> None:
    """Scan the recorded part of a body and mask it in place (with the echoes it holds, see
    failcore.evidence.echoes)."""
    if not body:
        return
    if "text" in body:
        # Offsets are into the unescaped text, which is what is recorded once a hit is masked in it.
        raw = unescape_ascii_json(body["text"].encode("utf-8"))
        hits, masked = _masked(raw, scan_json_body(scanner.engine, raw), echoes)
        if hits:
            body["text"] = masked.decode("utf-8", errors="replace")
    elif "b64" in body:
        raw = base64.b64decode(body["b64"])
        hits, masked = _masked(raw, scanner.engine.scan(raw), echoes)
        if hits:
            body["b64"] = base64.b64encode(masked).decode("ascii")
    else:
        return
    if hits:
        body["dlp_masked"] = body.get("dlp_masked", 0) + len(hits)  # (a past-cap hit's start may be masked)
    out.extend(_hit_record(scanner, h, where) for h in hits)


def _masked(raw: bytes, hits: list[Hit], echoes: Echoes, start: int = 0) -> tuple[list[Hit], bytes]:
    """(the hits that are not an echoed credential, `raw` with them and the echoes from `start`
    masked); `raw` itself when there is no hit."""
    if not hits:
        return hits, raw
    if echoes is None:
        return hits, mask_bytes(raw, hits)
    spans = echo_spans(raw, echoes[0], echoes[1], start)
    hits = not_echoed(hits, spans)
    return hits, mask_with_echoes(raw, hits, spans) if hits else raw


def _unique(hits: list[Hit]) -> list[Hit]:
    return list({(h.rule_id, h.fingerprint): h for h in hits}.values())


def _echo_masked(pairs: Sequence[Sequence[str]], echoes: Echoes) -> list[list[str]] | None:
    """`pairs` with the echoes masked in their values (mask_echoes), or None when none is echoed."""
    if echoes is None:
        return None
    echoed = [[n, mask_echoes(v.encode(), echoes[0], echoes[1]).decode("utf-8", "replace")] for n, v in pairs]
    return echoed if any(e[1] != p[1] for e, p in zip(echoed, pairs, strict=True)) else None


def _block_hits(
    texts: Scans, pairs: Sequence[Sequence[str]], echoes: Echoes
) -> tuple[list[tuple[list[Hit], list[Hit]]], list[Hit]]:
    """One scan of `pairs` as "name: value" lines: for each pair (its hits cut to its value, the hits
    touching its name; a hit across lines, a key split over headers, is in each it touches), and the
    hits in names only. With `echoes`, a hit that is an echoed credential is left to the echo masks."""
    lines = [f"{name}: {value}\n".encode() for name, value in pairs]
    block = b"".join(lines)
    hits = texts.scan(block) + escaped_hits(texts, block)  # (a byte not UTF-8 recorded `\\xNN`)
    if hits and echoes is not None:
        hits = not_echoed(hits, echo_spans(block, echoes[0], echoes[1]))
    if not hits:
        return [([], []) for _ in pairs], []
    per: list[tuple[list[Hit], list[Hit]]] = []
    valued: set[int] = set()
    line_start = 0
    for pair, line in zip(pairs, lines, strict=True):
        value_start = line_start + len(pair[0].encode()) + 2
        line_end = line_start + len(line) - 1
        touching = [h for h in hits if h.start < line_end and h.end > value_start]
        valued.update(id(h) for h in touching)
        mine = [
            replace(h, start=max(h.start, value_start) - value_start, end=min(h.end, line_end) - value_start)
            for h in touching
        ]
        per.append((mine, [h for h in hits if h.start < value_start - 2 and h.end > line_start]))
        line_start += len(line)
    return per, [h for h in hits if id(h) not in valued]


def _mask_headers(
    scanner: DlpScanner,
    fields: list[list[str]] | None,
    where: str,
    out: list[dict[str, Any]],
    echoes: Echoes = None,
) -> None:
    """All of a message's headers (or trailers: `where` is `request.header`, `response.trailer`, …) in
    one scan ("name: value" lines, so name-keyed rules apply). Names, header blocks and hosts repeat
    from one exchange to the next: one found clean before by this scanner is not scanned again."""
    if not fields:
        return
    texts = scanner.clean_texts
    # A secret spelled as a header name (`X-AKIA…: 1`) is masked in the name itself.
    named = header_name_hits(texts, [pair[0] for pair in fields])
    pairs = [
        pair for pair in fields if pair[0].lower() not in CREDENTIAL_HEADERS and not is_redaction(pair[1])
    ]
    per, only_names = _block_hits(texts, pairs, echoes)
    echoed = _echo_masked(pairs, echoes)
    if echoed is not None:
        # Also as the block reads with the echoes masked: a header that only echoes a credential drops
        # out, and the halves of a secret it sat between meet (as the blocking scan reads it too).
        kept = [i for i, pair in enumerate(echoed) if not is_redaction(pair[1])]
        more, more_names = _block_hits(texts, [echoed[i] for i in kept], None)
        for i, (mine, in_name) in zip(kept, more, strict=True):
            per[i] = (_unique(per[i][0] + mine), _unique(per[i][1] + in_name))
        only_names = _unique(only_names + more_names)
    masked = set()
    for pair, (mine, in_name) in zip(pairs, per, strict=True):
        if in_name:
            pair[0] = _redacted(in_name)
        if mine:
            pair[1] = _redacted(mine)
            masked.add(id(pair))
            out.extend(_hit_record(scanner, h, f"{where}:{pair[0].lower()}") for h in mine)
    # A hit in names only (a keyword-scoped token sent as a name) is recorded as the name's.
    named_prints = {(h.rule_id, h.fingerprint) for h in named}
    out.extend(
        _hit_record(scanner, replace(h, location=None), f"{where}-name")
        for h in only_names
        if (h.rule_id, h.fingerprint) not in named_prints
    )
    for pair in pairs:
        if pair[0].lower() in HOST_HEADERS and id(pair) not in masked:
            # (As written it was scanned with the other headers above.)
            other = spelling_hits(texts, pair[1], first=1)[1]
            if other:  # a lower-cased or split host (see host_spellings): masked like any header value
                pair[1] = _redacted(other)
                out.extend(_hit_record(scanner, h, f"{where}:{pair[0].lower()}") for h in other)
    if named:
        out.extend(_hit_record(scanner, replace(h, location=None), f"{where}-name") for h in named)
        for pair in fields:
            mine = header_name_hits(texts, [pair[0]])
            if mine:
                pair[0] = mask_text(pair[0], mine)


def _mask_target_host(scanner: DlpScanner, event: dict[str, Any]) -> list[Hit]:
    """A secret in the host the proxy connected to (`GET http://<key>.attacker.example/` with a harmless
    Host header, or a CONNECT's target): masked in `target.host` and the summary, not only in the URL.
    Its other spellings are scanned too (see host_spellings); their hits are returned to be recorded
    (those as written are recorded with the URL's)."""
    target = event.get("target")
    host = target.get("host") if isinstance(target, dict) else None
    if not isinstance(host, str) or not host:
        return []
    spelling, found = spelling_hits(scanner.clean_texts, host)
    if spelling == 0:
        masked = mask_text(host, found)
        found = []  # recorded with the URL's hits
    elif spelling == 1:
        masked = mask_text(host.upper(), found).lower()
    elif found:
        masked = _redacted(found)  # split across labels: no one span to mask
    else:
        return []
    target["host"] = masked  # type: ignore[index]
    summary = event.get("summary")
    if isinstance(summary, str) and host in summary:
        event["summary"] = summary.replace(host, masked)
    return found


def scan_event(
    scanner: DlpScanner, event: dict[str, Any], past_cap: Sequence[PastCapScan] = (), echoes: Echoes = None
) -> None:
    """Scan a built network event, mask every hit in it and attach the `dlp` block (writer thread).
    `past_cap`: the scans of streamed bodies beyond what the tape keeps (their hits carry offsets).
    `echoes`: the exchange's credentials, masked where they are echoed (mask_echoed_credentials) once
    the event is scanned as it was sent, together with the hits they overlap (failcore.evidence.echoes)."""
    hits: list[dict[str, Any]] = []
    s = scanner.settings
    if event.get("kind") == "websocket":
        _scan_websocket_event(scanner, event, echoes)
        return
    # Past-cap hits that start inside the recorded part are masked there first: their offsets hold only
    # until the recorded part's own hits are masked (a mask is shorter than the secret it replaces).
    # (The proxy masks them before anything else, see mask_straddling, and says so in the findings.)
    past = [(scan, *scan.results()) for scan in past_cap]
    mask_straddles(event, [(scan, found) for scan, found, _ in past if not getattr(scan, "masked", False)])
    request = event.get("request")
    if s.scan_request:
        target = event.get("target") or {}
        path = event.get("path") or ""
        url = f"{target.get('scheme')}://{target.get('host')}:{target.get('port')}{path}"
        url_hits = scan_url(scanner.clean_texts, url)
        url_hits += [replace(h, location="url") for h in escaped_hits(scanner.clean_texts, url)]
        origin = url[: len(url) - len(path)]
        url_hits, masked_url = _masked(utf8_bytes(url), url_hits, echoes, len(utf8_bytes(origin)))
        if url_hits:
            masked = masked_url.decode("utf-8", "replace")
            event["path"] = masked[len(origin) :] if masked.startswith(origin) else masked
            if event.get("method"):
                event["summary"] = f"{event['method']} {event['path'].split('?', 1)[0]}"[:300]
            hits.extend(_hit_record(scanner, h, "request") for h in url_hits)
        hits.extend(_hit_record(scanner, h, "request") for h in _mask_target_host(scanner, event))
        for kind in ("header", "trailer"):
            _mask_headers(scanner, (request or {}).get(f"{kind}s"), f"request.{kind}", hits, echoes)
        before = len(hits)
        _mask_body(scanner, (request or {}).get("body"), "request.body", hits, echoes)
        _add_taint((request or {}).get("body"), hits[before:])
    if s.scan_response:
        response = event.get("response")
        for kind in ("header", "trailer"):
            _mask_headers(scanner, (response or {}).get(f"{kind}s"), f"response.{kind}", hits, echoes)
        _mask_body(scanner, (response or {}).get("body"), "response.body", hits, echoes)
    if s.scan_request or s.scan_response:
        # The error, reason, method, LLM model names… quote either side (failcore.evidence.quoted).
        mask_quoted(scanner, event, hits, lambda hit, where: _hit_record(scanner, hit, where), echoes)
    coverage = []
    for scan, found, covered in past:
        coverage.append(covered)
        for offset, hit in found:
            hits.append(_located(_hit_record(scanner, hit, scan.where), f"{scan.where}@{offset}"))
    partial = [c for c in coverage if not c["complete"]]
    if echoes is not None:  # what the DLP masks left of them (nothing of one they overlapped)
        mask_echoed_credentials(event, list(echoes[0]), echoes[1])
    if not hits and not partial:
        return
    _attach_hits(scanner, event, hits)
    if coverage:
        event["dlp"]["past_cap"] = coverage
    warnings = event["warnings"]
    tainted = [h for h in hits if (h.get("taint_source") or {}).get("exfiltration_path")]
    if tainted:
        first = tainted[0]["taint_source"]
        warnings.append(
            {
                "reason": "exfiltration_path",
                "message": f"{tainted[0]['rule']} reached the model through the result of tool "
                f"{first.get('tool_name') or first.get('tool_call_id') or '?'}: a secret a tool read is "
                "being sent to the LLM provider",
            }
        )


def _attach_hits(scanner: DlpScanner, event: dict[str, Any], hits: list[dict[str, Any]]) -> None:
    """The event's `dlp` block, and its `dlp` warning."""
    event["dlp"] = {"hits": hits, "engine": scanner.engine.backend}
    warnings = event.setdefault("warnings", [])
    # A rule the policy ALLOWs is still masked (the tape never holds the value) but raises no warning.
    flagged = [h for h in hits if h["action"] != "ALLOW"]
    if flagged:
        rules = sorted({h["rule"] for h in flagged})
        warnings.append({"reason": "dlp", "message": f"{len(flagged)} DLP hit(s): {', '.join(rules)[:200]}"})


def scan_internal_error(
    scanner: DlpScanner | None, event: dict[str, Any], echoes: Echoes = None
) -> dict[str, Any]:
    """An internal_error event with every DLP hit and every echo of its exchange's credentials masked
    in what it quotes (failcore.evidence.quoted: the exception's message, its traceback, the
    exchange's summary and host), and the hits in its `dlp` block. Waits for a compiling engine."""
    if scanner is not None:
        hits: list[dict[str, Any]] = []
        try:
            mask_quoted(scanner, event, hits, lambda hit, where: _hit_record(scanner, hit, where), echoes)
        except Exception as exc:  # (rules whose build failed): what could not be scanned is not kept
            for container, key, _ in quoted_fields(event):
                container[key] = f"[not recorded: the DLP rules could not scan it: {type(exc).__name__}]"
            return event
        if hits:
            _attach_hits(scanner, event, hits)
    if echoes is not None:  # (no DLP rules: the echoes alone)
        mask_echoed_credentials(event, list(echoes[0]), echoes[1])
    return event


def _scan_websocket_event(scanner: DlpScanner, event: dict[str, Any], echoes: Echoes = None) -> None:
    """A WebSocket message is masked like a body, in both directions, with the echoes of its upgrade's
    credentials; a message the DLP guard dropped is recorded as the BLOCK it was."""
    detail = event.get("detail") or {}
    from_client = detail.get("direction") == "client->server"
    hits: list[dict[str, Any]] = []
    if scanner.settings.scan_request if from_client else scanner.settings.scan_response:
        where = "request.body" if from_client else "response.body"
        _mask_body(scanner, detail.get("body"), where, hits, echoes)
    if echoes is not None:  # what the DLP masks left of them (as scan_event)
        mask_echoed_credentials(event, list(echoes[0]), echoes[1])
    for hit in hits:
        hit["location"] = f"websocket.{'client' if from_client else 'server'}-message"
    if not hits:
        return
    event["dlp"] = {"hits": hits, "engine": scanner.engine.backend}
    blocking = [h for h in hits if h["action"] == "BLOCK"]
    if event.get("outcome") == "BLOCKED" and blocking:
        worst = max(blocking, key=lambda h: SEVERITY_RANK.get(h["severity"], 0))
        event["rule"] = f"dlp:{worst['rule']}"
        event["reason"] = f"DLP: {worst['rule']} ({worst['severity']}) in the message: dropped, not forwarded"
    flagged = [h for h in hits if h["action"] != "ALLOW"]
    if flagged:
        rules = sorted({h["rule"] for h in flagged})
        event.setdefault("warnings", []).append(
            {"reason": "dlp", "message": f"{len(flagged)} DLP hit(s): {', '.join(rules)[:200]}"}
        )


def _add_taint(body: dict[str, Any] | None, hits: list[dict[str, Any]]) -> None:
    if not hits or not body or "text" not in body:
        return
    try:
        doc = orjson.loads(body["text"])
    except orjson.JSONDecodeError:
        return
    if not isinstance(doc, dict):
        return
    for hit in hits:
        _, _, pointer = hit["location"].partition("request.body:")
        if pointer.startswith("/"):
            hit["taint_source"] = taint_source(doc, pointer)
