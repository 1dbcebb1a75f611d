"""The references an exchange's evidence is built from, taken at a hook: header tuples and body bytes
are immutable, so taking them costs no copy, and the event is built from them later, off the request
path (failcore.evidence.exchange)."""

from __future__ import annotations

import time

from mitmproxy import http

from failcore.evidence.exchange import ExchangeSnapshot, MessageSnapshot
from failcore.proxy.session import BodyTap, FlowState
from failcore.wiretext import wire_text


def _message_snapshot(msg: http.Message, tap: BodyTap | None) -> MessageSnapshot:
    return MessageSnapshot(
        http_version=msg.http_version,
        headers=msg.headers.fields,
        content=None if tap is not None else msg.raw_content,
        tap=tap,
        ts_start=msg.timestamp_start,
        ts_end=msg.timestamp_end,
        trailers=msg.trailers.fields if msg.trailers else None,
    )


def snapshot_exchange(flow: http.HTTPFlow, state: FlowState | None, action: str) -> ExchangeSnapshot:
    req = flow.request
    resp = flow.response
    state = state or FlowState()
    now = time.time()
    return ExchangeSnapshot(
        flow_id=flow.id,
        action=action,
        host=wire_text(state.decided_host or req.host),
        port=req.port,
        # A CONNECT opens a tunnel whose protocol is not known yet.
        scheme="tunnel" if action == "http.connect" else req.scheme,
        method=wire_text(req.method),
        path=wire_text(req.path),
        ts_start=req.timestamp_start,
        ts_end=(resp.timestamp_end if resp and resp.timestamp_end else None) or now,
        request=_message_snapshot(req, state.request_tap),
        response=_message_snapshot(resp, state.response_tap) if resp is not None else None,
        status=resp.status_code if resp is not None else None,
        reason=resp.reason if resp is not None else None,
        decision=state.decision,
        blocked=state.blocked,
        error=flow.error.msg if flow.error else None,
        internal_error=state.internal_error,
        llm=state.llm if state.llm is not None and state.llm.evidence is not None else None,
        cut=state.cut,
        warnings=state.warnings,
        replay=state.replay,
        stream_complete=bool(state.llm and state.llm.tracker and state.llm.tracker.completed),
    )
