"""DlpGuard: finds credentials and personal data leaving (and entering) the machine.

Evidence-only scanning runs in the tape writer's thread (`scan_event`), so by default DLP costs the
request path nothing. Only when the policy can BLOCK on a hit in enforce mode is the request body
scanned before it is forwarded (in a worker thread for large bodies). Streams are scanned from the
recorded copy (`side`) or, in `strict` mode, chunk by chunk with a sliding window that cuts the stream
on a BLOCK hit. Whatever is recorded has every hit masked: the tape never holds the secret.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import orjson
from mitmproxy import ctx, http

from failcore.dlp import (
    DlpEngine,
    DlpRule,
    Hit,
    builtin_rules,
    mask_bytes,
    mask_text,
    scan_headers,
    scan_json_body,
    scan_url,
    taint_source,
    unescape_ascii_json,
)
from failcore.dlp.pending import PendingEngine, engine_ready
from failcore.evidence import (
    CREDENTIAL_HEADERS,
    DECODE_LIMIT,
    ON_LOOP_DECODE_LIMIT,
    DecodedBody,
    decode_body,
    is_encoded,
    read_off_loop,
)
from failcore.policy import Action, Decision, DlpSettings, Policy
from failcore.proxy.cutoff import CutVerdict
from failcore.proxy.guard import guarded
from failcore.proxy.pastcap import PastCapScan
from failcore.proxy.session import FlowState, Session
from failcore.proxy.streamtap import response_streams, should_stream_request

logger = logging.getLogger("failcore")

SCAN_OFF_LOOP_BYTES = 64 * 1024
_SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}


@functools.lru_cache(maxsize=4)
def _engine_for(rules: tuple[DlpRule, ...], salt: bytes) -> DlpEngine:
    # Compiling the Hyperscan database takes seconds without its on-disk cache: share it between policy
    # reloads (and proxies in one process) that use the same rules, and build it in the background so
    # the proxy listens meanwhile; every scan waits for it (failcore.dlp.pending).
    return cast(DlpEngine, PendingEngine(lambda: DlpEngine(rules, backend="auto", salt=salt)))


@dataclass(frozen=True, slots=True)
class DlpScanner:
    """A policy's DLP settings with their compiled engine; immutable, shared with the writer thread."""

    engine: DlpEngine
    settings: DlpSettings
    enforce: bool
    _can_block: bool = field(init=False, repr=False)

    @classmethod
    def for_policy(cls, policy: Policy, salt: bytes) -> DlpScanner | None:
        settings = policy.dlp
        if not settings.enabled:
            return None
        rules = (*builtin_rules(), *settings.gitleaks_rules, *settings.custom_rules)
        return cls(_engine_for(tuple(rules), salt), settings, policy.mode == "enforce")

    def action(self, hit: Hit) -> Action:
        return self.settings.action_for(hit.rule_id, hit.severity)

    @property
    def can_block(self) -> bool:
        return self._can_block

    def __post_init__(self) -> None:
        s = self.settings
        blocking = (
            s.default_action == "BLOCK"
            or "BLOCK" in s.severity_actions.values()
            or "BLOCK" in s.rule_actions.values()
        )
        object.__setattr__(self, "_can_block", blocking)


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


# Rules for what a session cookie legitimately is: a hit of one of these spanning a whole cookie value
# is that cookie, not a secret smuggled in it.
_SESSION_RULES = frozenset({"jwt", "generic-api-key-assignment", "generic-secret-assignment"})
# Authorization schemes whose credential is one token; the others carry parameters (Digest, AWS SigV4).
_TOKEN_SCHEMES = frozenset({"bearer", "basic", "token", "apikey", "key"})


def _own_spans(name: str, value: str) -> list[tuple[int, int]]:
    """Byte spans of a credential header's value that are the header's own credential: a hit inside
    one of an Authorization header's, or equal to a single-value header's, is that credential."""
    raw = value.encode("utf-8")
    if name in ("authorization", "proxy-authorization"):
        scheme, sep, _ = value.partition(" ")
        if not sep:
            return [(0, len(raw))]
        start = len(scheme.encode()) + 1
        while start < len(raw) and raw[start : start + 1] == b" ":
            start += 1
        if scheme.lower() not in _TOKEN_SCHEMES:
            return [(start, len(raw))]
        end = raw.find(b" ", start)
        return [(start, len(raw) if end < 0 else end)]
    stripped = raw.strip()
    start = raw.find(stripped) if stripped else 0
    return [(start, start + len(stripped))]


def _cookie_value_spans(value: str) -> list[tuple[int, int]]:
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


def foreign_credential_hits(engine: DlpEngine, headers: list[tuple[str, str]]) -> list[Hit]:
    """Secrets in credential headers that are not the header's own credential: an AWS key in a Cookie,
    a key appended after a Bearer token. A key that *is* the Authorization/X-Api-Key value is what
    the header is for (the host rules decide where it may go) and is not reported here."""
    found: list[Hit] = []
    for name, value in headers:
        lower = name.lower()
        if lower not in CREDENTIAL_HEADERS:
            continue
        for hit in scan_headers(engine, [(name, value)]):
            if lower in ("cookie", "set-cookie"):
                whole = any(
                    value.encode()[s:e].strip() == value.encode()[hit.start : hit.end]
                    for s, e in _cookie_value_spans(value)
                )
                if whole and hit.rule_id in _SESSION_RULES:
                    continue
            elif lower.endswith("authorization"):
                if any(s <= hit.start and hit.end <= e for s, e in _own_spans(lower, value)):
                    continue
            elif (hit.start, hit.end) in _own_spans(lower, value):
                continue
            found.append(hit)
    return found


def header_name_hits(engine: DlpEngine, names: Sequence[str], where: str = "header-name") -> list[Hit]:
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


def scan_request_for_block(
    scanner: DlpScanner,
    url: str,
    headers: list[tuple[str, str]],
    body: bytes,
    trailers: Sequence[tuple[str, str]] = (),
) -> list[Hit]:
    """The hits that decide a request in enforce mode: the url, header (and trailer) values and names,
    secrets foreign to a credential header, and the body."""
    fields = [*headers, *trailers]
    hits = scan_url(scanner.engine, url)
    hits += scan_headers(scanner.engine, [(k, v) for k, v in fields if k.lower() not in CREDENTIAL_HEADERS])
    hits += foreign_credential_hits(scanner.engine, fields)
    hits += header_name_hits(scanner.engine, [k for k, _ in fields])
    if body:
        hits += scan_json_body(scanner.engine, unescape_ascii_json(body))
    return hits


def judge_request(
    scanner: DlpScanner,
    url: str,
    headers: list[tuple[str, str]],
    trailers: Sequence[tuple[str, str]],
    raw: bytes,
    decoded: DecodedBody,
) -> tuple[list[Hit], str | None]:
    """The request's hits, and why its body could not be scanned whole (None when it was)."""
    hits = scan_request_for_block(scanner, url, headers, decoded.data, trailers)
    if decoded.error is not None and raw and raw != decoded.data:
        # What decoded before the error was scanned; what it says on the wire is scanned too.
        hits += scan_json_body(scanner.engine, unescape_ascii_json(raw))
    if decoded.over_limit:
        return hits, f"the request body decodes to more than {DECODE_LIMIT} bytes: it cannot be scanned whole"
    return hits, None


def _mask_body(
    scanner: DlpScanner, body: dict[str, Any] | None, where: str, out: list[dict[str, Any]]
) -> None:
    """Scan the recorded part of a body and mask it in place."""
    if not body:
        return
    if "text" in body:
        # Offsets are into the unescaped text, which is what is recorded once a hit is masked in it.
        raw = unescape_ascii_json(body["text"].encode("utf-8"))
        hits = scan_json_body(scanner.engine, raw)
        if hits:
            body["text"] = mask_bytes(raw, hits).decode("utf-8", errors="replace")
    elif "b64" in body:
        raw = base64.b64decode(body["b64"])
        hits = scanner.engine.scan(raw)
        if hits:
            body["b64"] = base64.b64encode(mask_bytes(raw, hits)).decode("ascii")
    else:
        return
    if hits:
        body["dlp_masked"] = len(hits)
    out.extend(_hit_record(scanner, h, where) for h in hits)


def _mask_headers(
    scanner: DlpScanner, message: dict[str, Any] | None, where: str, out: list[dict[str, Any]]
) -> None:
    """All of a message's headers in one scan ("name: value" lines, so name-keyed rules apply)."""
    if not message:
        return
    # A secret spelled as a header name (`X-AKIA…: 1`) is masked in the name itself.
    names = [pair[0] for pair in message.get("headers", [])]
    named = header_name_hits(scanner.engine, names) if names else []
    pairs = [
        pair
        for pair in message.get("headers", [])
        if pair[0].lower() not in CREDENTIAL_HEADERS and not pair[1].startswith("[redacted ")
    ]
    lines = [f"{name}: {value}\n".encode() for name, value in pairs]
    hits = scanner.engine.scan(b"".join(lines))
    line_start = 0
    for pair, line in zip(pairs, lines, strict=True):
        value_start = line_start + len(pair[0].encode()) + 2
        line_end = line_start + len(line) - 1
        mine = [
            replace(h, start=h.start - value_start, end=h.end - value_start)
            for h in hits
            if value_start <= h.start and h.end <= line_end
        ]
        if mine:
            # The whole value becomes the hits' fingerprints: what surrounds a secret in a header
            # (a prefix, a second half) can be as telling as the secret.
            pair[1] = f"[redacted {', '.join(dict.fromkeys(h.fingerprint for h in mine))}]"
            out.extend(_hit_record(scanner, h, f"{where}.header:{pair[0].lower()}") for h in mine)
        line_start += len(line)
    if named:
        out.extend(_hit_record(scanner, replace(h, location=None), f"{where}.header-name") for h in named)
        for pair in message.get("headers", []):
            mine = header_name_hits(scanner.engine, [pair[0]])
            if mine:
                pair[0] = mask_text(pair[0], mine)


def scan_event(scanner: DlpScanner, event: dict[str, Any], past_cap: Sequence[PastCapScan] = ()) -> None:
    """Scan a built network event, mask every hit in it and attach the `dlp` block (writer thread).
    `past_cap`: the scans of streamed bodies beyond what the tape keeps (their hits carry offsets)."""
    hits: list[dict[str, Any]] = []
    s = scanner.settings
    if event.get("kind") == "websocket":
        _scan_websocket_event(scanner, event)
        return
    request = event.get("request")
    if s.scan_request:
        target = event.get("target") or {}
        path = event.get("path") or ""
        url = f"{target.get('scheme')}://{target.get('host')}:{target.get('port')}{path}"
        url_hits = scan_url(scanner.engine, url)
        if url_hits:
            origin = url[: len(url) - len(path)]
            masked = mask_text(url, url_hits)
            event["path"] = masked[len(origin) :] if masked.startswith(origin) else masked
            if event.get("method"):
                event["summary"] = f"{event['method']} {event['path'].split('?', 1)[0]}"[:300]
            hits.extend(_hit_record(scanner, h, "request") for h in url_hits)
        _mask_headers(scanner, request, "request", hits)
        before = len(hits)
        _mask_body(scanner, (request or {}).get("body"), "request.body", hits)
        _add_taint((request or {}).get("body"), hits[before:])
    if s.scan_response:
        response = event.get("response")
        _mask_headers(scanner, response, "response", hits)
        _mask_body(scanner, (response or {}).get("body"), "response.body", hits)
    coverage = []
    for scan in past_cap:
        found, covered = scan.results()
        coverage.append(covered)
        for offset, hit in found:
            hits.append(_located(_hit_record(scanner, hit, scan.where), f"{scan.where}@{offset}"))
            if offset < scan.cap:
                # It starts inside the recorded part, where its beginning alone matched nothing.
                side = event.get(scan.where.split(".", 1)[0]) or {}
                _mask_recorded_tail(side.get("body"), offset, hit)
    partial = [c for c in coverage if not c["complete"]]
    if not hits and not partial:
        return
    event["dlp"] = {"hits": hits, "engine": scanner.engine.backend}
    if coverage:
        event["dlp"]["past_cap"] = coverage
    warnings = event.setdefault("warnings", [])
    # A rule the policy ALLOWs is still masked (the tape never holds the value) but raises no warning.
    flagged = [h for h in hits if h["action"] != "ALLOW"]
    if flagged:
        rules = sorted({h["rule"] for h in flagged})
        warnings.append({"reason": "dlp", "message": f"{len(flagged)} DLP hit(s): {', '.join(rules)[:200]}"})
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


def _scan_websocket_event(scanner: DlpScanner, event: dict[str, Any]) -> None:
    """A WebSocket message is masked like a body, in both directions; a message the DLP guard dropped
    is recorded as the BLOCK it was."""
    detail = event.get("detail") or {}
    from_client = detail.get("direction") == "client->server"
    if not (scanner.settings.scan_request if from_client else scanner.settings.scan_response):
        return
    hits: list[dict[str, Any]] = []
    _mask_body(scanner, detail.get("body"), "request.body" if from_client else "response.body", hits)
    for hit in hits:
        hit["location"] = f"websocket.{'client' if from_client else 'server'}-message"
    if not hits:
        return
    event["dlp"] = {"hits": hits, "engine": scanner.engine.backend}
    blocking = [h for h in hits if h["action"] == "BLOCK"]
    if event.get("outcome") == "BLOCKED" and blocking:
        worst = max(blocking, key=lambda h: _SEVERITY_RANK.get(h["severity"], 0))
        event["rule"] = f"dlp:{worst['rule']}"
        event["reason"] = f"DLP: {worst['rule']} ({worst['severity']}) in the message: dropped, not forwarded"
    flagged = [h for h in hits if h["action"] != "ALLOW"]
    if flagged:
        rules = sorted({h["rule"] for h in flagged})
        event.setdefault("warnings", []).append(
            {"reason": "dlp", "message": f"{len(flagged)} DLP hit(s): {', '.join(rules)[:200]}"}
        )


def ws_message_verdict(scanner: DlpScanner, content: bytes, from_client: bool) -> Hit | None:
    """The hit that makes a WebSocket message BLOCKed (dropped, never forwarded), or None. A message
    from the client is judged like a request body; one from the server like a strict-mode stream."""
    s = scanner.settings
    if not scanner.enforce or not scanner.can_block:
        return None
    if not (s.scan_request if from_client else (s.scan_response and s.stream == "strict")):
        return None
    blocking = [
        h
        for h in scan_json_body(scanner.engine, unescape_ascii_json(content))
        if scanner.action(h) == "BLOCK"
    ]
    return max(blocking, key=lambda h: _SEVERITY_RANK.get(h.severity, 0)) if blocking else None


def _mask_recorded_tail(body: dict[str, Any] | None, start: int, hit: Hit) -> None:
    """Mask the recorded body from `start` to its end: the first bytes of a secret that runs past it."""
    if not body:
        return
    if "text" in body:
        raw = body["text"].encode("utf-8")
        if start < len(raw):
            tail = replace(hit, start=start, end=len(raw))
            body["text"] = mask_bytes(raw, [tail]).decode("utf-8", errors="replace")
            body["dlp_masked"] = body.get("dlp_masked", 0) + 1
    elif "b64" in body:
        raw = base64.b64decode(body["b64"])
        if start < len(raw):
            body["b64"] = base64.b64encode(
                mask_bytes(raw, [replace(hit, start=start, end=len(raw))])
            ).decode()
            body["dlp_masked"] = body.get("dlp_masked", 0) + 1


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


def block_decision(scanner: DlpScanner, hits: list[Hit], current: Decision | None) -> Decision | None:
    """A Decision for the worst BLOCK-action hit, or None when no hit blocks."""
    blocking = [h for h in hits if scanner.action(h) == "BLOCK"]
    if not blocking:
        return None
    worst = max(blocking, key=lambda h: _SEVERITY_RANK.get(h.severity, 0))
    where = worst.location or "body"
    reason = f"DLP: {worst.rule_id} ({worst.severity}) found in the request at {where}: {worst.preview}"
    if scanner.enforce:
        return Decision("BLOCK", f"dlp:{worst.rule_id}", reason, True, "BLOCK")
    if current is not None and current.decision == "BLOCK":
        return None
    return Decision("WARN", f"dlp:{worst.rule_id}", reason, True, "BLOCK")


def unscannable_decision(scanner: DlpScanner, why: str, state: FlowState) -> Decision | None:
    """The policy's `dlp.unscannable` choice for a body that cannot be scanned whole: BLOCK refuses it
    (in enforce mode; WARN in observe), WARN forwards it with a warning. Both are recorded."""
    state.warnings.append({"reason": "dlp_unscannable", "message": why})
    action = scanner.settings.unscannable
    reason = f"DLP: {why} (dlp.unscannable: {action})"
    if action == "BLOCK" and scanner.enforce:
        return Decision("BLOCK", "dlp:unscannable", reason, True, "BLOCK")
    if state.decision is not None and state.decision.decision == "BLOCK":
        return None
    return Decision("WARN", "dlp:unscannable", reason, action == "BLOCK", action)


class StreamDlp:
    """Strict stream mode: every chunk is scanned together with the bytes before it, so a secret split
    across chunks is caught by the chunk that completes it, which is then never forwarded."""

    def __init__(self, scanner: DlpScanner, window: int = 4096) -> None:
        self.scanner = scanner
        self.window = window
        self.tail = b""

    def __call__(self, chunk: bytes) -> CutVerdict | None:
        buffer = self.tail + chunk
        fresh_from = len(self.tail)
        self.tail = buffer[-self.window :]
        if not self.scanner.enforce:
            return None
        for hit in self.scanner.engine.scan(buffer):
            if hit.end > fresh_from and self.scanner.action(hit) == "BLOCK":
                return CutVerdict(
                    "dlp",
                    f"{hit.rule_id} ({hit.severity}) in the response stream: {hit.preview}",
                    keep=max(0, hit.start - fresh_from),
                )
        return None


def _past_cap_scan(scanner: DlpScanner, message: http.Message, where: str) -> PastCapScan:
    compressed = is_encoded(message.headers.get("content-encoding"))
    return PastCapScan(scanner.engine, ctx.options.failcore_body_cap, where, compressed=compressed)


class DlpGuard:
    def __init__(self, session: Session) -> None:
        self.session = session

    @guarded("dlp.request")
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        scanner = self.session.dlp
        if flow.response is not None or scanner is None or not scanner.can_block:
            return None
        if not scanner.settings.scan_request:
            return None
        state = self.session.flows.get(flow.id)
        if state is None or state.request_tap is not None:
            return None
        headers = list(flow.request.headers.items(multi=True))
        trailers = list(flow.request.trailers.items(multi=True)) if flow.request.trailers else []
        raw = flow.request.raw_content or b""
        encoding = flow.request.headers.get("content-encoding")
        url = flow.request.pretty_url
        # While the rules still compile (just after start-up) the scan waits for them, off the loop.
        if read_off_loop(len(raw), encoding, SCAN_OFF_LOOP_BYTES) or not engine_ready(scanner.engine):
            return self._decide_off_loop(flow, state, scanner, url, headers, trailers, raw, encoding)
        decoded = decode_body(raw, encoding, ON_LOOP_DECODE_LIMIT)
        if decoded.over_limit:
            return self._decide_off_loop(flow, state, scanner, url, headers, trailers, raw, encoding)
        self._decide(flow, state, scanner, *judge_request(scanner, url, headers, trailers, raw, decoded))
        return None

    async def _decide_off_loop(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        scanner: DlpScanner,
        url: str,
        headers: list[tuple[str, str]],
        trailers: list[tuple[str, str]],
        raw: bytes,
        encoding: str | None,
    ) -> None:
        def scan() -> tuple[list[Hit], str | None]:
            return judge_request(
                scanner, url, headers, trailers, raw, decode_body(raw, encoding, DECODE_LIMIT)
            )

        self._decide(flow, state, scanner, *await asyncio.to_thread(scan))

    def _decide(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        scanner: DlpScanner,
        hits: list[Hit],
        unscannable: str | None = None,
    ) -> None:
        verdict = block_decision(scanner, hits, state.decision)
        if verdict is None and unscannable is not None:
            verdict = unscannable_decision(scanner, unscannable, state)
        if verdict is None:
            return
        state.decision = verdict
        if verdict.decision == "BLOCK":
            from failcore.proxy.gate import blocked_response

            state.blocked = True
            flow.response = blocked_response(verdict, flow.id)

    @guarded("dlp.websocket_message")
    def websocket_message(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        scanner = self.session.dlp
        if scanner is None or flow.websocket is None or not flow.websocket.messages:
            return None
        message = flow.websocket.messages[-1]
        if len(message.content) > SCAN_OFF_LOOP_BYTES or not engine_ready(scanner.engine):
            return self._judge_ws_off_loop(flow, scanner, message)
        self._judge_ws(flow, message, ws_message_verdict(scanner, message.content, message.from_client))
        return None

    async def _judge_ws_off_loop(self, flow: http.HTTPFlow, scanner: DlpScanner, message: Any) -> None:
        hit = await asyncio.to_thread(ws_message_verdict, scanner, message.content, message.from_client)
        self._judge_ws(flow, message, hit)

    def _judge_ws(self, flow: http.HTTPFlow, message: Any, hit: Hit | None) -> None:
        if hit is None:
            return
        message.drop()
        direction = "client->server" if message.from_client else "server->client"
        logger.info(
            "failcore dropped a WebSocket message (%s) of flow %s: %s", direction, flow.id, hit.rule_id
        )

    @guarded("dlp.requestheaders")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        scanner = self.session.dlp
        if scanner is None or flow.response is not None or not scanner.settings.scan_request:
            return
        if flow.metadata.get("failcore_held"):
            return  # held whole: scanned before it is forwarded, and its evidence scanned whole
        if should_stream_request(
            flow, ctx.options.failcore_stream_threshold, ctx.options.failcore_llm_body_max
        ):
            self.session.state(flow).request_observers.append(
                _past_cap_scan(scanner, flow.request, "request.body")
            )

    @guarded("dlp.responseheaders")
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        scanner = self.session.dlp
        state = self.session.flows.get(flow.id)
        if scanner is None or state is None or flow.response is None:
            return
        s = scanner.settings
        if s.scan_response and response_streams(flow, state):
            state.stream_observers.append(_past_cap_scan(scanner, flow.response, "response.body"))
        if s.stream == "strict" and s.scan_response and scanner.can_block and scanner.enforce:
            state.cut_guards.append(StreamDlp(scanner))
