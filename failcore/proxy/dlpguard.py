"""DlpGuard: finds credentials and personal data leaving (and entering) the machine.

Evidence-only scanning runs where evidence is built, off the hooks (failcore.evidence.dlp), so by
default DLP costs the request path nothing. Only when the policy can BLOCK on a hit in enforce mode
is the request body scanned before it is forwarded (in a worker thread for large bodies). Streams are
scanned from the recorded copy (`side`) or, in `strict` mode, chunk by chunk with a sliding window
that cuts the stream on a BLOCK hit (failcore.proxy.streamdlp). Whatever is recorded has every hit
masked: the tape never holds the secret.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from mitmproxy import http

from failcore.dlp import Hit, scan_headers, scan_json_body, scan_url, unescape_ascii_json
from failcore.dlp.escapes import escaped_hits, unescaped
from failcore.dlp.locations import header_block_text, recorded_header
from failcore.dlp.model import Scans
from failcore.dlp.pending import engine_ready
from failcore.dlp.scanner import SEVERITY_RANK, DlpScanner
from failcore.evidence import (
    CREDENTIAL_HEADERS,
    DECODE_LIMIT,
    DECODED_CODINGS,
    HOST_HEADERS,
    DecodedBody,
    aws_streaming,
    body_encoding,
    content_encodings,
    decode_body,
    is_encoded,
    read_off_loop,
    transfer_codings,
)
from failcore.evidence.dlp import foreign_credential_hits, header_name_hits, host_hits, spelling_hits
from failcore.evidence.pastcap import PastCapScan
from failcore.evidence.pastcapworker import origin_for
from failcore.policy.model import Decision
from failcore.proxy.cleanscans import CleanScans
from failcore.proxy.dlpblock import block_pairs, header_block_hits, lines_of_block, recorded_name
from failcore.proxy.gate import blocked_response
from failcore.proxy.guard import guarded
from failcore.proxy.requesturl import header_value, request_url
from failcore.proxy.session import FlowState, Session, answer
from failcore.proxy.streamdlp import StreamDlp
from failcore.proxy.streamtap import request_streams, response_streams
from failcore.wiretext import utf8_bytes, wire_text

logger = logging.getLogger("failcore")

SCAN_OFF_LOOP_BYTES = 64 * 1024


def _scan_now(_key: tuple[object, ...], scan: Callable[..., list[Hit]], *args: Any) -> list[Hit]:
    return scan(*args)


def scan_request_for_block(
    scanner: DlpScanner,
    url: str,
    headers: list[tuple[str, str]],
    body: bytes,
    trailers: Sequence[tuple[str, str]] = (),
    clean: CleanScans | None = None,
    host: str = "",
    redacted: frozenset[str] = frozenset(),
    recorded_url: str = "",
) -> list[Hit]:
    """The hits that decide a request in enforce mode: the url (and the `recorded_url`, as the tape
    records it: the host connected to, the port written out), the host the proxy will connect to (an
    absolute-form request names it apart from the Host header the url is built from), header (and
    trailer) values and names, each alone and the headers all together as the evidence scan reads them
    (block_pairs), secrets foreign to a credential header, and the body. With `clean`, what it already
    found clean is not scanned again (the body always is, alone or in the header block's one pass;
    the header block is remembered whole, in the scanner's clean_texts that the evidence scan
    shares). `redacted`: the policy's
    `redact_headers`, recorded as fingerprints and so not in the evidence's header block."""
    engine = scanner.engine
    scan = clean.scan if clean is not None else _scan_now
    fields = [*headers, *trailers]
    # Each name lower-cased once, as the tape records it: the credential, block and echo checks read it.
    lowered = [recorded_name(name) for name, _ in fields]
    credential = [lower in CREDENTIAL_HEADERS for lower in lowered]
    hits = scan(("url", url), url_hits, engine, url)
    if recorded_url and recorded_url != url:
        hits += scan(("url", recorded_url), url_hits, engine, recorded_url)
    if host:
        hits += scan(("host", host), host_hits, engine, host)
    block_key = ("block", tuple(headers), redacted)
    count = len(headers)
    # Whether a credential or one of the policy's `redact_headers` is among the headers (its value may
    # echo in others: header_block_hits then reads the block with the echoes masked too).
    echoes = any(credential[:count]) or (bool(redacted) and not redacted.isdisjoint(lowered[:count]))
    pairs: list[tuple[str, str]] | None = None
    lines_clean = body_clean = plain = False
    body = unescape_ascii_json(body) if body else body
    if clean is not None and not clean.known(block_key):
        # One pass over the header block answers for the block and for each header in it scanned alone
        # (CleanTexts.lines_clean) when it finds nothing in any of them: the usual request. A body it
        # could read as it is (no `\`: no JSON view; no `%`: no percent view) is read in that pass too.
        # In the usual request every name and value is ASCII, without a newline or a fingerprint, and
        # none is a credential or redacted header: the block as recorded (block_pairs) is then the
        # headers as they are, each one line of it (lines_of_block), known without building either.
        plain = not echoes and _plain_headers(headers)
        pairs = headers if plain else block_pairs(headers, redacted, engine.salt, lowered=lowered)
        block_text = header_block_text(pairs)
        if body and b"\\" not in body and b"%" not in body:
            lines_clean = body_clean = scanner.clean_texts.lines_clean(block_text, body)
        if not lines_clean:
            lines_clean = scanner.clean_texts.lines_clean(block_text)
    # Which headers (not the trailers: not lines of that block) its pass answered for alone.
    alone = ([True] * count if plain else lines_of_block(headers, lowered, redacted)) if lines_clean else []
    for index, ((name, value), is_credential) in enumerate(zip(fields, credential, strict=True)):
        if not is_credential and not (index < len(alone) and alone[index]):
            hits += scan(("header", name, value), scan_headers, engine, [(name, value)])
        # (An ASCII name's str.lower() is its recorded name's.)
        if (lowered[index] if name.isascii() else name.lower()) in HOST_HEADERS:
            hits += scan(("host-header", value), host_header_hits, engine, value)
    # The headers together, as the evidence scan reads them (a rule keyed by a word in another header):
    # remembered clean whole (the list of headers), never header by header.
    block = scanner.clean_texts if clean is not None else engine
    if clean is not None and lines_clean and not echoes:
        # (header_block_hits: the block as sent is quiet, nothing echoed; the key's characters counted
        # as _key_chars counts them: "block", every name and value.)
        clean.remember(block_key, 5 + sum([len(name) + len(value) for name, value in headers]))
    else:
        hits += scan(
            block_key, header_block_hits, block, headers, redacted, engine.salt, pairs, lines_clean, echoes
        )
    if trailers:  # (the evidence reads a message's trailers as a block of their own too)
        hits += scan(
            ("trailers", tuple(trailers), redacted), header_block_hits, block, trailers, redacted, engine.salt
        )
    for (name, value), is_credential in zip(fields, credential, strict=True):
        if is_credential:
            # (As the tape would read it: a byte that is not UTF-8 written as an escape.)
            pair = recorded_header(name, value)
            hits += scan(("credential", *pair), foreign_credential_hits, engine, [pair])
    names = tuple(name for name, _ in fields)
    hits += scan(("names", names), header_name_hits, engine, list(names))
    if body and not body_clean:
        hits += scan_json_body(engine, body)
    return hits


def _plain_headers(headers: Sequence[tuple[str, str]]) -> bool:
    """Whether every name and value is ASCII, without a newline or a fingerprint's start (one C pass
    each over them all: the usual request's headers)."""
    text = "".join([name + value for name, value in headers])
    return text.isascii() and "\n" not in text and "[redacted hmac-sha256:" not in text


def url_hits(engine: Scans, url: str) -> list[Hit]:
    """A URL's hits as sent and as the tape records it (a byte that is not UTF-8 written `\\xNN`,
    failcore.wiretext): the recorded text (scan_url, as the evidence scans it), what its escapes
    hide (escaped_hits, as the evidence scans it too) and the bytes the upstream receives."""
    recorded = wire_text(url)
    hits = scan_url(engine, recorded)
    if recorded is url:
        return hits
    hits += [replace(h, location="url") for h in escaped_hits(engine, recorded)]
    raw = utf8_bytes(url)
    if raw != (unescaped(recorded.encode()) or (b"",))[0]:  # the URL also spells an escape as text
        hits += [replace(h, location="url") for h in engine.scan(raw)]
    return hits


def host_header_hits(engine: Scans, value: str) -> list[Hit]:
    """A Host (or :authority) header's secrets in its spellings (host_spellings): the first that has
    any and, when that is the value as written, the first of the others that has any too (the
    evidence scan reads the value as written with the other headers, its other spellings apart)."""
    value = wire_text(value)
    index, found = spelling_hits(engine, value)
    if index == 0:
        found = found + spelling_hits(engine, value, first=1)[1]
    return found


def judge_request(
    scanner: DlpScanner,
    url: str,
    headers: list[tuple[str, str]],
    trailers: Sequence[tuple[str, str]],
    raw: bytes,
    decoded: DecodedBody,
    clean: CleanScans | None = None,
    host: str = "",
    redacted: frozenset[str] = frozenset(),
    recorded_url: str = "",
) -> tuple[list[Hit], str | None]:
    """The request's hits, and why its body could not be scanned whole (None when it was)."""
    hits = scan_request_for_block(
        scanner, url, headers, decoded.data, trailers, clean, host, redacted, recorded_url
    )
    if raw and raw != decoded.data and (decoded.error is not None or _framed(headers)):
        # What decoded before the error was scanned; what it says on the wire is scanned too (and an
        # aws-chunked body's framing, whose chunk signatures and trailer lines its data leaves out).
        hits += scan_json_body(scanner.engine, unescape_ascii_json(raw))
    if decoded.over_limit:
        return hits, f"the request body decodes to more than {DECODE_LIMIT} bytes: it cannot be scanned whole"
    if decoded.error is not None and _unscannable_when_undecoded(headers):
        # A receiver whose decoder is more lenient (or just different) reads what was not scanned; one
        # that knows a coding of a stack failcore read as no coding (`x-foo, gzip`) reads something else.
        # (A lone coding failcore does not decode, a made-up `x-foo`, say, was scanned as sent above.)
        why = decoded.error.partition(":")[0]  # (its message may quote the body or a header)
        return hits, f"the request body does not decode per its codings ({why}): not scanned whole"
    return hits, None


def _framed(headers: list[tuple[str, str]]) -> bool:
    """Whether the body is in S3's aws-chunked framing (its data decoded, its framing not)."""
    return "aws-chunked" in content_encodings(_encoding(headers))


def _unscannable_when_undecoded(headers: list[tuple[str, str]]) -> bool:
    """Whether a body that does not decode whole per its codings (body_encoding) is unscannable: yes,
    unless its one coding is a Content-Encoding failcore reads as no coding (an undecoded stack is
    never scanned whole, nor a transfer coding failcore does not decode, `compress`: its receiver
    undoes it, as HTTP/1.1 requires)."""
    if transfer_codings(header_value(headers, "transfer-encoding")):
        return True
    if aws_streaming(header_value(headers, "x-amz-content-sha256")):
        return True  # (aws-chunked by that header alone: a framing failcore decodes)
    codings = content_encodings(header_value(headers, "content-encoding"))
    return len(codings) > 1 or (len(codings) == 1 and codings[0] in DECODED_CODINGS)


# The headers that name a body's codings (body_encoding's three arguments, in its order).
_CODING_HEADERS = ("content-encoding", "transfer-encoding", "x-amz-content-sha256")


def _encoding(headers: list[tuple[str, str]]) -> str | None:
    """The codings of a message's body as mitmproxy holds it (body_encoding: a Transfer-Encoding's
    `gzip` in `gzip, chunked` too, which mitmproxy forwards undone)."""
    # One pass for the three headers (header_value's reading of each), on every request's path.
    found: dict[str, list[str]] = {name: [] for name in _CODING_HEADERS}
    for key, value in headers:
        if len(key) in (16, 17, 20) and key.isascii() and (values := found.get(key.lower())) is not None:
            values.append(value)
    content, transfer, sha256 = (", ".join(v) if v else None for v in found.values())
    if content is None and transfer is None and sha256 is None:
        return None  # (body_encoding's answer for none of them: the usual request)
    return body_encoding(content, transfer, sha256)


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
    return max(blocking, key=lambda h: SEVERITY_RANK.get(h.severity, 0)) if blocking else None


def block_decision(scanner: DlpScanner, hits: list[Hit], current: Decision | None) -> Decision | None:
    """A Decision for the worst BLOCK-action hit, or None when no hit blocks."""
    blocking = [h for h in hits if scanner.action(h) == "BLOCK"]
    if not blocking:
        return None
    worst = max(blocking, key=lambda h: SEVERITY_RANK.get(h.severity, 0))
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


def _past_cap_scan(session: Session, scanner: DlpScanner, message: http.Message, where: str) -> PastCapScan:
    compressed = is_encoded(_encoding(list(message.headers.items(multi=True))))
    # The scan runs in a separate process (failcore.evidence.pastcapworker) that rebuilds this scanner.
    origin = origin_for(session.policy, session.salt) if scanner is session.dlp else None
    return PastCapScan(scanner.engine, session.settings.body_cap, where, compressed=compressed, origin=origin)


class DlpGuard:
    def __init__(self, session: Session) -> None:
        self.session = session
        self._clean: CleanScans | None = None

    def _clean_scans(self, scanner: DlpScanner) -> CleanScans:
        if self._clean is None or self._clean.scanner is not scanner:
            self._clean = CleanScans(scanner)
        return self._clean

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
        req = flow.request
        headers = list(req.headers.items(multi=True))
        trailers = list(req.trailers.items(multi=True)) if req.trailers else []
        raw = req.raw_content or b""
        encoding = _encoding(headers)
        url = request_url(req, headers)
        # While the rules still compile (just after start-up) the scan waits for them, off the loop.
        # (A body without codings, the usual one, is read as it is: read_off_loop's and decode_body's
        # answers for no coding.)
        plain = encoding is None
        if plain:
            big = len(raw) > SCAN_OFF_LOOP_BYTES
        else:
            big = read_off_loop(len(raw), encoding, SCAN_OFF_LOOP_BYTES)
        if big or not engine_ready(scanner.engine):
            return self._decide_off_loop(flow, state, scanner, url, headers, trailers, raw, encoding)
        # A small compressed body is decoded on the loop only as far as a plain one is scanned there:
        # one of a few KiB can inflate to megabytes (ON_LOOP_DECODE_LIMIT, 8 MiB: 30-50 ms of a stalled
        # loop); past SCAN_OFF_LOOP_BYTES it is decoded and scanned in a worker thread.
        decoded = DecodedBody(raw) if plain else decode_body(raw, encoding, SCAN_OFF_LOOP_BYTES)
        if decoded.over_limit:
            return self._decide_off_loop(flow, state, scanner, url, headers, trailers, raw, encoding)
        clean = self._clean_scans(scanner)
        verdict = judge_request(
            scanner, url, headers, trailers, raw, decoded, clean, req.host, *self._as_recorded(flow, state)
        )
        self._decide(flow, state, scanner, *verdict)
        return None

    def _as_recorded(self, flow: http.HTTPFlow, state: FlowState) -> tuple[frozenset[str], str]:
        """(the policy's `redact_headers`, the request's URL as the tape records it)."""
        req = flow.request
        policy = self.session.policy
        redacted = policy.redact_headers if policy is not None else frozenset()
        return redacted, f"{req.scheme}://{state.decided_host or req.host}:{req.port}{req.path}"

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
        host = flow.request.host
        recorded = self._as_recorded(flow, state)

        def scan() -> tuple[list[Hit], str | None]:
            decoded = decode_body(raw, encoding, DECODE_LIMIT)
            return judge_request(scanner, url, headers, trailers, raw, decoded, None, host, *recorded)

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
            state.blocked = True
            answer(flow, blocked_response(verdict, flow.id))

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
        settings = self.session.settings
        if request_streams(flow, settings, self.session.flows.get(flow.id)):
            self.session.state(flow).request_observers.append(
                _past_cap_scan(self.session, scanner, flow.request, "request.body")
            )

    @guarded("dlp.responseheaders")
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        scanner = self.session.dlp
        state = self.session.flows.get(flow.id)
        if scanner is None or state is None or flow.response is None:
            return
        s = scanner.settings
        settings = self.session.settings
        if s.scan_response and response_streams(flow, state, settings):
            state.stream_observers.append(
                _past_cap_scan(self.session, scanner, flow.response, "response.body")
            )
        if s.stream == "strict" and s.scan_response and scanner.can_block and scanner.enforce:
            encoding = _encoding(list(flow.response.headers.items(multi=True)))
            state.cut_guards.append(StreamDlp(scanner, encoding=encoding, warnings=state.warnings))
