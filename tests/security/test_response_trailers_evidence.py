"""Evidence: a response's trailers are recorded and masked like its headers.

mitmproxy 12.3 reads trailers only on HTTP/2 and HTTP/3 (its HTTP/1 layer refuses them), and the
logging upstream speaks HTTP/1.1 only, so this builds the exchange's event from a snapshot as the
recorder takes it (the request side goes through the real proxy in test_http2_trailers.py). A secret,
and the request's own credential echoed back, in a response trailer were neither on the tape nor
masked; now both are recorded masked."""

from __future__ import annotations

import orjson

from failcore.evidence.exchange import (
    EvidenceSettings,
    ExchangeSnapshot,
    MessageSnapshot,
    build_exchange_event,
)
from tests.security.evidence_helpers import AWS_KEY, SALT, origin_and_scanner

TOKEN = "trailer-echo-token-0123456789"


def test_response_trailers_are_recorded_and_masked() -> None:
    _, scanner = origin_and_scanner()
    request = MessageSnapshot(
        "HTTP/2.0", ((b"authorization", f"Bearer {TOKEN}".encode()),), b"", None, 1.0, 1.1
    )
    trailers = ((b"x-debug", f"key={AWS_KEY}".encode()), (b"x-echo", TOKEN.encode()), (b"x-ok", b"1"))
    head = ((b"content-type", b"text/plain"),)
    response = MessageSnapshot("HTTP/2.0", head, b"ok", None, 1.2, 1.3, trailers)
    snap = ExchangeSnapshot(
        "f", "http.request", "api.example.test", 443, "https", "GET", "/t", 1.0, 1.3,
        request, response, 200, "OK", None, False, None, None, None,
    )  # fmt: skip
    event = build_exchange_event(snap, EvidenceSettings("r", 4096, SALT, frozenset(), dlp=scanner))
    if callable(event):
        event = event()
    recorded = event["response"]["trailers"]
    assert [name for name, _ in recorded] == ["x-debug", "x-echo", "x-ok"]
    values = dict(recorded)
    assert values["x-ok"] == "1"
    assert "redacted" in values["x-debug"] and "redacted" in values["x-echo"]
    hits = [(h["rule"], h["location"]) for h in event["dlp"]["hits"]]
    assert ("aws-access-key-id", "response.trailer:x-debug") in hits, hits
    assert "trailers" not in event["request"]  # none sent: none recorded
    text = orjson.dumps(event)
    assert AWS_KEY.encode() not in text and TOKEN.encode() not in text
