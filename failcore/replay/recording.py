"""A recorded run read back from its tape: its HTTP exchanges, each with the request shape it matches
and the response it can serve (or why it cannot)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from failcore.replay.canned import CannedResponse, replay_headers
from failcore.replay.pointers import Pointer
from failcore.replay.request import RequestShape, dlp_pointers, normalize_body
from failcore.tape import iter_events
from failcore.tape.badlines import BadLines


def body_bytes(body: dict[str, Any] | None) -> bytes | None:
    """The decoded body a tape holds, or None when the tape kept only part of it."""
    if body is None:
        return b""
    if body.get("truncated"):
        return None
    if "text" in body:
        return str(body["text"]).encode("utf-8")
    try:
        return base64.b64decode(body.get("b64") or "", validate=True)
    except (binascii.Error, ValueError):
        return None


def canned_from_event(event: dict[str, Any]) -> tuple[CannedResponse | None, str | None]:
    """The response a recorded network event can serve, or None and why it cannot."""
    replay = event.get("replay") or {}
    if replay.get("mode") == "miss":
        return None, "the recorded exchange was itself a replay miss"
    response = event.get("response")
    status = event.get("status")
    if not isinstance(response, dict) or not isinstance(status, int):
        return None, f"the recorded exchange has no response ({event.get('fail_reason') or 'no status'})"
    body = body_bytes(response.get("body"))
    if body is None:
        return None, "the recorded response body was truncated in the tape, so it cannot be served"
    chunks = offsets = None
    stream = event.get("stream")
    if isinstance(stream, dict):
        recorded = [c for c in stream.get("chunks") or [] if isinstance(c, list) and len(c) == 2]
        sizes = tuple(int(c[1]) for c in recorded)
        # Boundaries are over the wire bytes; a decoded (content-encoded) body has other sizes.
        if sizes and sum(sizes) == len(body) and not stream.get("chunks_truncated"):
            chunks, offsets = sizes, tuple(float(c[0]) for c in recorded)
        else:
            chunks = (len(body),) if body else ()
    return (
        CannedResponse(
            status=status,
            reason=str(response.get("reason") or ""),
            headers=replay_headers(response.get("headers") or []),
            body=body,
            chunks=chunks,
            offsets_ms=offsets,
        ),
        None,
    )


@dataclass(frozen=True, slots=True)
class RecordedExchange:
    seq: int
    summary: str
    request: RequestShape
    response: CannedResponse | None
    unservable: str | None
    sensitive: tuple[Pointer, ...]
    llm: dict[str, Any] | None


def event_request_shape(event: dict[str, Any], ignore: Sequence[Pointer]) -> RequestShape:
    target = event.get("target") or {}
    request = event.get("request") or {}
    raw = body_bytes(request.get("body"))
    return RequestShape.make(
        str(event.get("method") or ""),
        str(target.get("scheme") or ""),
        str(target.get("host") or ""),
        int(target.get("port") or 0),
        str(event.get("path") or ""),
        normalize_body(raw, ignore) if raw is not None else None,
    )


def is_http_exchange(event: dict[str, Any]) -> bool:
    return (
        event.get("kind") == "network" and event.get("action") == "http.request" and bool(event.get("method"))
    )


def recorded_exchanges(events: Iterable[dict[str, Any]], ignore: Sequence[Pointer]) -> list[RecordedExchange]:
    out = []
    for event in events:
        if not is_http_exchange(event):
            continue
        canned, why = canned_from_event(event)
        llm = event.get("llm")
        out.append(
            RecordedExchange(
                seq=int(event.get("seq") or 0),
                summary=str(event.get("summary") or ""),
                request=event_request_shape(event, ignore),
                response=canned,
                unservable=why,
                sensitive=dlp_pointers(event),
                llm=llm if isinstance(llm, dict) else None,
            )
        )
    return out


def parse_replay_source(value: str) -> tuple[Path, str | None]:
    """`TAPE[:RUN]`: a tape directory, optionally followed by the run to replay (default: its last)."""
    path = Path(value).expanduser()
    if path.is_dir() or ":" not in value:
        return path, None
    tape, _, run = value.rpartition(":")
    if not run or "/" in run:
        return path, None
    return Path(tape).expanduser(), run


def last_run(tape: Path) -> str | None:
    last = None
    for event in iter_events(tape, kinds=("run_start",), on_bad_line=lambda line, why: None):
        last = event.get("run")
    return last


@dataclass(frozen=True, slots=True)
class Recording:
    tape: Path
    run: str
    exchanges: list[RecordedExchange]


def load_recording(tape: Path, run: str | None, ignore: Sequence[Pointer]) -> Recording:
    if not tape.is_dir():
        raise ValueError(f"replay: no tape directory at {tape}")
    run = run or last_run(tape)
    if run is None:
        raise ValueError(f"replay: {tape} holds no run")
    bad = BadLines()
    events = iter_events(tape, run=run, kinds=("network",), on_bad_line=bad, check_lines=True)
    exchanges = recorded_exchanges(events, ignore)
    if len(bad):
        # Answers replayed from lines someone edited are answers nobody received: not served.
        first = list(bad.found.items())[:3]
        named = "; ".join(f"{segment} line {line}: {why}" for (segment, line), why in first)
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise ValueError(
            f"replay: {len(bad)} line(s) of run {run} on {tape} are not as failcore wrote them "
            f"({named}{more}); `failcore verify {tape}` checks the whole tape"
        )
    if not exchanges:
        raise ValueError(f"replay: run {run} on {tape} has no HTTP exchanges")
    return Recording(tape, run, exchanges)
