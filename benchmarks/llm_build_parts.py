"""The parts of building one exchange's event from its snapshot, timed on their own (thread CPU µs):
what benchmarks/llm_exchange_cost.py --breakdown reports for each kind of LLM exchange."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable

import orjson

from failcore.evidence.body import body_evidence
from failcore.evidence.dlp import scan_event
from failcore.evidence.exchange import (
    EvidenceSettings,
    ExchangeSnapshot,
    MessageSnapshot,
    _contract_drift,
    build_exchange_event,
    message_framing,
)
from failcore.evidence.redact import redact_headers
from failcore.tape.writer import encode_line, serialise_event

REPEAT = 200


def _us(work: Callable[[], object], repeat: int = REPEAT) -> float:
    work()
    started = time.thread_time()
    for _ in range(repeat):
        work()
    return (time.thread_time() - started) / repeat * 1e6


def _body(message: MessageSnapshot, cap: int) -> Callable[[], object]:
    encoding, ctype = message_framing(message)
    tap = message.tap
    if tap is not None:
        return lambda: body_evidence(
            bytes(tap.kept),
            complete=tap.size <= len(tap.kept),
            wire_size=tap.size,
            content_encoding=encoding,
            content_type=ctype,
            cap=cap,
            wire_sha256=tap.digest.hexdigest(),
        )
    content = message.content or b""
    return lambda: body_evidence(
        content, complete=True, wire_size=len(content), content_encoding=encoding, content_type=ctype, cap=cap
    )


def build_parts(snap: ExchangeSnapshot, cfg: EvidenceSettings) -> dict[str, float]:
    """µs per part for this snapshot: the whole build (DLP left out), its parts, the DLP pass over the
    built event, and the tape line."""
    plain = dataclasses.replace(cfg, dlp=None, scan_origin=None)
    parts: dict[str, float] = {"whole (no DLP)": _us(lambda: build_exchange_event(snap, plain))}
    response = snap.response
    parts["headers"] = _us(
        lambda: [
            redact_headers(m.headers, cfg.redact, cfg.salt, [])
            for m in (snap.request, response)
            if m is not None
        ]
    )
    parts["request body"] = _us(_body(snap.request, cfg.body_cap))
    if response is not None:
        parts["response body"] = _us(_body(response, cfg.body_cap))
        if response.tap is not None:
            tap = response.tap
            parts["stream block"] = _us(tap.stream_evidence)
            parts["of which sha256 hexdigest"] = _us(lambda: tap.digest.hexdigest())
    event = build_exchange_event(snap, plain)
    assert isinstance(event, dict)
    if snap.llm is not None:
        llm = snap.llm
        parts["llm: contract drift"] = _us(lambda: _contract_drift(llm, event["request"]))
    if cfg.dlp is not None:
        dlp = cfg.dlp
        parts["DLP pass (worker)"] = _us(lambda: scan_event(dlp, copy.deepcopy(event), (), None), 50)
        parts["of which deepcopy"] = _us(lambda: copy.deepcopy(event), 50)
    body = serialise_event(event)
    try:
        from failcore.evidence.remotebuild import remote_eligible, snapshot_to_wire
    except ImportError:  # (a checkout from before the worker built events)
        pass
    else:
        if remote_eligible(snap, cfg, 0):
            parts["hand-off: snapshot frame (dumps)"] = _us(lambda: orjson.dumps(snapshot_to_wire(snap)))
            parts["hand-off: built event back (loads)"] = _us(lambda: orjson.loads(body))
    parts["DLP hand-off: event frame (dumps)"] = _us(lambda: orjson.dumps(event))
    parts["tape line"] = _us(lambda: encode_line(b"0" * 64, 1, serialise_event(event)))
    parts["event bytes"] = float(len(body))
    return parts
