"""Replay a recorded run from its tape: matched requests are answered from the tape, never upstream.

How a request is matched: method, scheme, host, port, path and query (parameters in any order) and
the body. JSON bodies are compared after normalisation: key order does not matter and the values at
the ignored JSON pointers (`DEFAULT_IGNORED_POINTERS` plus `--ignore`, `*` matches any key or index)
are left out, because SDKs put per-session ids there. The n-th identical request gets the n-th
recorded response.

How an answer is served: mitmproxy sends a response set by an addon in one piece, so an SSE answer
would lose its chunk boundaries. Instead a matched flow is redirected to `ReplayServer`, a loopback
HTTP/1.1 server on the proxy's own event loop that sends the recorded response (paced as recorded
with `--pace recorded`), and a `Rechunker` stream callable re-cuts whatever bytes reach mitmproxy
at the recorded boundaries. mitmproxy then streams it to the client through its normal response
path, so the client sees the recorded chunks, one chunk each. The flow's request is restored before
anything records it.

The replay is recorded as a new run: run_start carries `replay_of`, every network event a `replay`
block saying whether it was replayed, overridden (a fork, `--override N=FILE`), forwarded live or
refused as a miss (`--on-miss fail`, status 599 with the closest recorded request and the first JSON
pointer where the two differ).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import re
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl

import h11
import orjson
from mitmproxy import ctx, exceptions, http

from failcore.proxy.guard import guarded
from failcore.proxy.session import BodyTap, Session
from failcore.tape import iter_events

logger = logging.getLogger("failcore")

# Fields SDKs fill with per-session or per-call values, so two runs of the same agent differ there.
DEFAULT_IGNORED_POINTERS: Final[tuple[str, ...]] = (
    "/metadata/user_id",  # Anthropic SDK clients (Claude Code) put a per-session id here
    "/metadata/session_id",
    "/prompt_cache_key",  # OpenAI prompt-cache routing key, often per session
    "/request_id",
    "/idempotency_key",
    "/timestamp",
    "/created_at",
)
# Per-hop framing, and the length/encoding of a body the tape stores decoded.
_DROPPED_RESPONSE_HEADERS: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "content-length",
        "content-encoding",
    }
)
REDACTED_MARK: Final = "[redacted hmac-sha256:"
TOKEN_HEADER: Final = "x-failcore-replay-token"
MISS_STATUS: Final = 599
_PREVIEW_CHARS: Final = 200
_ABSENT: Final = object()

Pointer = tuple[str, ...]


# ---------------------------------------------------------------- JSON pointers and normalisation


def parse_pointer(pointer: str) -> Pointer:
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise ValueError(f"JSON pointer must start with '/': {pointer!r}")
    return tuple(part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/"))


def format_pointer(parts: Iterable[str | int]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


IGNORED: Final = "[failcore: ignored]"


def without_pointers(value: Any, patterns: Sequence[Pointer]) -> Any:
    """A copy of `value` without what the pointer patterns name. Removed list items are replaced by a
    marker rather than deleted, so the indexes of their siblings stay comparable."""
    if not patterns:
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            rest = [p[1:] for p in patterns if p and p[0] in (key, "*")]
            if any(not r for r in rest):
                continue
            out[key] = without_pointers(item, rest) if rest else item
        return out
    if isinstance(value, list):
        items: list[Any] = []
        for index, item in enumerate(value):
            rest = [p[1:] for p in patterns if p and p[0] in (str(index), "*")]
            if any(not r for r in rest):
                items.append(IGNORED)
            else:
                items.append(without_pointers(item, rest) if rest else item)
        return items
    return value


@dataclass(frozen=True, slots=True)
class NormalizedBody:
    raw: bytes
    json: Any  # the parsed body minus ignored fields, or _ABSENT when it is not JSON
    key: bytes


def normalize_body(raw: bytes, ignore: Sequence[Pointer]) -> NormalizedBody:
    if raw.lstrip()[:1] in (b"{", b"["):
        try:
            value = without_pointers(orjson.loads(raw), ignore)
            return NormalizedBody(raw, value, b"j:" + orjson.dumps(value, option=orjson.OPT_SORT_KEYS))
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            pass
    return NormalizedBody(raw, _ABSENT, b"r:" + hashlib.sha256(raw).digest())


@dataclass(frozen=True, slots=True)
class Difference:
    pointer: Pointer
    recorded: Any
    live: Any


def _same_scalar(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def first_difference(recorded: Any, live: Any, at: Pointer = ()) -> Difference | None:
    """The first place, in document order of the recorded value, where two JSON values differ."""
    if isinstance(recorded, dict) and isinstance(live, dict):
        for key, value in recorded.items():
            if key not in live:
                return Difference((*at, key), value, _ABSENT)
            found = first_difference(value, live[key], (*at, key))
            if found is not None:
                return found
        for key, value in live.items():
            if key not in recorded:
                return Difference((*at, key), _ABSENT, value)
        return None
    if isinstance(recorded, list) and isinstance(live, list):
        for index, (a, b) in enumerate(zip(recorded, live, strict=False)):
            found = first_difference(a, b, (*at, str(index)))
            if found is not None:
                return found
        if len(recorded) != len(live):
            n = min(len(recorded), len(live))
            return Difference(
                (*at, str(n)),
                recorded[n] if n < len(recorded) else _ABSENT,
                live[n] if n < len(live) else _ABSENT,
            )
        return None
    if isinstance(recorded, dict | list) or isinstance(live, dict | list):
        return Difference(at, recorded, live)
    return None if _same_scalar(recorded, live) else Difference(at, recorded, live)


def preview(value: Any) -> Any:
    """A JSON value small enough for an error body or a terminal; long values are cut with '…'."""
    if isinstance(value, str):
        return value if len(value) <= _PREVIEW_CHARS else value[:_PREVIEW_CHARS] + "…"
    if isinstance(value, dict | list):
        text = orjson.dumps(value).decode()
        return value if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "…"
    return value


def dlp_pointers(event: dict[str, Any]) -> tuple[Pointer, ...]:
    """Request-body JSON pointers a DLP scan flagged in a recorded event: their values are masked."""
    hits = ((event.get("dlp") or {}).get("hits")) or []
    out = []
    for hit in hits:
        location = hit.get("location") if isinstance(hit, dict) else None
        if isinstance(location, str) and location.startswith("request.body:"):
            with contextlib.suppress(ValueError):
                out.append(parse_pointer(location.removeprefix("request.body:")))
    return tuple(out)


def masked(pointer: Pointer, sensitive: Sequence[Pointer]) -> bool:
    """A value is masked when it is, contains or lies inside a DLP-flagged location."""
    return any(pointer[: len(s)] == s or s[: len(pointer)] == pointer for s in sensitive)


def difference_dict(diff: Difference, sensitive: Sequence[Pointer]) -> dict[str, Any]:
    out: dict[str, Any] = {"where": "body", "pointer": format_pointer(diff.pointer)}
    hide = masked(diff.pointer, sensitive)
    for side, value in (("recorded", diff.recorded), ("live", diff.live)):
        if value is _ABSENT:
            out[f"{side}_absent"] = True
        else:
            out[side] = "[masked: DLP hit]" if hide else preview(value)
    return out


# ---------------------------------------------------------------- requests and recorded exchanges


@dataclass(frozen=True, slots=True)
class RequestShape:
    method: str
    scheme: str
    host: str
    port: int
    path: str
    query: tuple[tuple[str, str], ...]
    body: NormalizedBody | None  # None: the recording kept only part of it, so it cannot be matched

    @classmethod
    def make(
        cls, method: str, scheme: str, host: str, port: int, target: str, body: NormalizedBody | None
    ) -> RequestShape:
        path, _, query = target.partition("?")
        pairs = tuple(sorted(parse_qsl(query, keep_blank_values=True)))
        return cls(method.upper(), scheme.lower(), host.lower(), port, path, pairs, body)

    @property
    def route(self) -> tuple[str, str, str]:
        return (self.method, self.host, self.path)

    def key(self) -> tuple[Any, ...] | None:
        if self.body is None:
            return None
        return (self.method, self.scheme, self.host, self.port, self.path, self.query, self.body.key)

    @property
    def url(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.query)
        return f"{self.scheme}://{self.host}:{self.port}{self.path}" + (f"?{query}" if query else "")


def request_difference(
    recorded: RequestShape, live: RequestShape, sensitive: Sequence[Pointer] = ()
) -> dict[str, Any] | None:
    """Where a live request first departs from a recorded one: the method, the URL or a body pointer."""
    if recorded.method != live.method:
        return {"where": "method", "recorded": recorded.method, "live": live.method}
    if recorded.url != live.url:
        return {"where": "url", "recorded": preview(recorded.url), "live": preview(live.url)}
    if recorded.body is None:
        return {"where": "body", "pointer": None, "note": "the recorded body was truncated in the tape"}
    if live.body is None or recorded.body.key == live.body.key:
        return None
    if recorded.body.json is not _ABSENT and live.body.json is not _ABSENT:
        diff = first_difference(recorded.body.json, live.body.json)
        if diff is not None:
            return difference_dict(diff, sensitive)
    a, b = recorded.body.raw, live.body.raw
    offset = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return {"where": "body", "pointer": None, "offset": offset, "recorded_size": len(a), "live_size": len(b)}


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


@dataclass(frozen=True, slots=True)
class CannedResponse:
    """A response to serve: recorded or from an override file."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    chunks: tuple[int, ...] | None = None  # chunk sizes when it was streamed; None: send with a length
    offsets_ms: tuple[float, ...] | None = None


def replay_headers(recorded: Iterable[Sequence[str]]) -> tuple[tuple[str, str], ...]:
    out = []
    for pair in recorded:
        if len(pair) != 2:
            continue
        name, value = str(pair[0]), str(pair[1])
        if name.lower() in _DROPPED_RESPONSE_HEADERS or REDACTED_MARK in value:
            continue
        out.append((name, value))
    return tuple(out)


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


class ReplayIndex:
    """Recorded exchanges by request key; each key serves its recordings in order, once each."""

    def __init__(self, exchanges: Sequence[RecordedExchange]) -> None:
        self.exchanges = list(exchanges)
        self.by_key: dict[tuple[Any, ...], deque[RecordedExchange]] = {}
        for ex in self.exchanges:
            key = ex.request.key()
            if key is not None:
                self.by_key.setdefault(key, deque()).append(ex)
        self.consumed: set[int] = set()

    def take(self, live: RequestShape) -> RecordedExchange | None:
        key = live.key()
        queue = self.by_key.get(key) if key is not None else None
        if not queue:
            return None
        ex = queue.popleft()
        self.consumed.add(ex.seq)
        return ex

    def closest(self, live: RequestShape) -> RecordedExchange | None:
        """The recording the live request most likely stands for: the next unused one to the same
        method+host+path, else any to it, else the next unused one to the same host."""
        fresh = [ex for ex in self.exchanges if ex.seq not in self.consumed]
        for pool, same in (
            (fresh, lambda ex: ex.request.route == live.route),
            (self.exchanges, lambda ex: ex.request.route == live.route),
            (fresh, lambda ex: ex.request.host == live.host),
        ):
            for ex in pool:
                if same(ex):
                    return ex
        return None


def miss_body(live: RequestShape, closest: RecordedExchange | None, message: str) -> dict[str, Any]:
    return {
        "error": {
            "type": "failcore_replay_miss",
            "message": message,
            "request": preview(f"{live.method} {live.url}"),
            "closest": {"seq": closest.seq, "summary": preview(closest.summary)} if closest else None,
            "first_difference": request_difference(closest.request, live, closest.sensitive)
            if closest
            else None,
        }
    }


# ---------------------------------------------------------------- sources and overrides


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
    events = iter_events(tape, run=run, kinds=("network",), on_bad_line=lambda line, why: None)
    exchanges = recorded_exchanges(events, ignore)
    if not exchanges:
        raise ValueError(f"replay: run {run} on {tape} has no HTTP exchanges")
    return Recording(tape, run, exchanges)


def _load_document(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        return orjson.loads(text)
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(text)


OVERRIDE_KEYS_HELP = (
    "status (int, default 200), reason (text), headers (mapping or [name, value] pairs), and either "
    "body (text, or any JSON value, sent as JSON) or sse (list of event strings)"
)


def load_override(path: Path) -> CannedResponse:
    """A response file: `status`, `reason`, `headers` (mapping or [name, value] pairs) and either
    `body` (text, or any JSON value, sent as JSON) or `sse` (event strings, one chunk each)."""
    try:
        doc = _load_document(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"override {path}: {e}") from None
    except Exception as e:  # ruamel's parser errors share no base class worth naming
        raise ValueError(f"override {path}: {type(e).__name__}: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"override {path}: expected a mapping with {OVERRIDE_KEYS_HELP}")
    unknown = set(doc) - {"status", "reason", "headers", "body", "sse"}
    if unknown:
        raise ValueError(f"override {path}: unknown keys {sorted(unknown)}; allowed: {OVERRIDE_KEYS_HELP}")
    status = doc.get("status", 200)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
        raise ValueError(f"override {path}: status must be an integer 100..999")
    raw_headers = doc.get("headers") or {}
    pairs = list(raw_headers.items()) if isinstance(raw_headers, dict) else list(raw_headers)
    if not all(isinstance(p, list | tuple) and len(p) == 2 for p in pairs):
        raise ValueError(f"override {path}: headers must be a mapping or a list of [name, value]")
    headers = list(replay_headers([[str(k), str(v)] for k, v in pairs]))
    names = {name.lower() for name, _ in headers}
    if "sse" in doc and "body" in doc:
        raise ValueError(f"override {path}: give body or sse, not both")
    chunks: tuple[int, ...] | None = None
    if "sse" in doc:
        events = doc["sse"]
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            raise ValueError(f"override {path}: sse must be a list of strings")
        pieces = [(e.rstrip("\n") + "\n\n").encode() for e in events]
        body = b"".join(pieces)
        chunks = tuple(len(p) for p in pieces)
        content_type = "text/event-stream"
    else:
        value = doc.get("body", "")
        if isinstance(value, str):
            body, content_type = value.encode(), "text/plain; charset=utf-8"
        else:
            body, content_type = orjson.dumps(value), "application/json"
    if "content-type" not in names:
        headers.append(("content-type", content_type))
    return CannedResponse(status, str(doc.get("reason") or ""), tuple(headers), body, chunks)


def parse_overrides(specs: Sequence[str]) -> dict[int, tuple[Path, CannedResponse]]:
    out: dict[int, tuple[Path, CannedResponse]] = {}
    for spec in specs:
        number, sep, file = spec.partition("=")
        if not sep or not number.strip().isdigit() or int(number) < 1 or not file:
            raise ValueError(f"override {spec!r}: expected N=FILE with N >= 1")
        path = Path(file).expanduser()
        out[int(number)] = (path, load_override(path))
    return out


# ---------------------------------------------------------------- serving


StreamFn = Callable[[bytes], bytes | Sequence[bytes]]


class Rechunker:
    """A response `stream` callable that cuts the bytes at the recorded chunk boundaries, whatever
    boundaries TCP gave them on the way from `ReplayServer`, and hands each chunk to the stream the
    stream tap installed (its copy for the tape, usage metering, DLP and budget cut-offs)."""

    def __init__(self, sizes: Sequence[int], inner: StreamFn) -> None:
        self.sizes = deque(n for n in sizes if n > 0)
        self.buffer = bytearray()
        self.inner = inner

    def __call__(self, data: bytes) -> list[bytes]:
        self.buffer += data
        out = []
        while self.sizes and len(self.buffer) >= self.sizes[0]:
            n = self.sizes.popleft()
            out.append(bytes(self.buffer[:n]))
            del self.buffer[:n]
        if self.buffer and (not data or not self.sizes):
            out.append(bytes(self.buffer))
            self.buffer.clear()
        forwarded: list[bytes] = []
        for chunk in out:
            result = self.inner(chunk)
            forwarded.extend([result] if isinstance(result, bytes) else result)
        return [chunk for chunk in forwarded if chunk]


_TOKEN_CHARS: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _safe_header(name: str, value: str) -> bool:
    """Recorded headers are hostile: only well-formed ones are sent again."""
    return bool(_TOKEN_CHARS.match(name)) and not any(c in value for c in "\r\n\x00")


class ReplayServer:
    """Loopback HTTP/1.1 server that answers flows redirected to it with the response registered
    under the token they carry. It is a server mitmproxy treats as any upstream, so the answer takes
    mitmproxy's streaming path; see the module docstring for why a response set in the `request` hook
    cannot keep SSE chunk boundaries."""

    def __init__(self, pace: str) -> None:
        self.pace = pace
        self.pending: dict[str, CannedResponse] = {}
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def register(self, canned: CannedResponse) -> str:
        token = secrets.token_hex(16)
        self.pending[token] = canned
        return token

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                token = await self._read_request(conn, reader)
                if token is None:
                    return
                canned = self.pending.pop(token, None) or CannedResponse(
                    502, "Bad Gateway", (("content-type", "text/plain"),), b"failcore replay: unknown token\n"
                )
                await self._send(conn, writer, canned)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError) as e:
            logger.debug("failcore replay server: %s", e)
        finally:
            writer.close()

    @staticmethod
    async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> str | None:
        token: str | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                token = next(
                    (v.decode("latin-1") for k, v in event.headers if k == TOKEN_HEADER.encode()), ""
                )
            elif isinstance(event, h11.EndOfMessage):
                return token or ""
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, canned: CannedResponse) -> None:
        headers = [(k, v) for k, v in canned.headers if _safe_header(k, v)]
        if canned.chunks is None:
            headers.append(("content-length", str(len(canned.body))))
        else:
            headers.append(("transfer-encoding", "chunked"))
        writer.write(
            conn.send(h11.Response(status_code=canned.status, headers=headers, reason=canned.reason.encode()))
            or b""
        )
        if canned.chunks is None:
            if canned.body:
                writer.write(conn.send(h11.Data(data=canned.body)) or b"")
        else:
            await self._send_chunks(conn, writer, canned)
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()

    async def _send_chunks(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, canned: CannedResponse
    ) -> None:
        assert canned.chunks is not None
        paced = self.pace == "recorded" and canned.offsets_ms is not None
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        offset = 0
        for i, size in enumerate(canned.chunks):
            if paced:
                assert canned.offsets_ms is not None
                delay = t0 + canned.offsets_ms[i] / 1000 - loop.time()
                if delay > 0:
                    await writer.drain()
                    await asyncio.sleep(delay)
            piece = canned.body[offset : offset + size]
            offset += size
            if piece:
                writer.write(conn.send(h11.Data(data=piece)) or b"")
        if offset < len(canned.body):
            writer.write(conn.send(h11.Data(data=canned.body[offset:])) or b"")


# ---------------------------------------------------------------- the addon


@dataclass(slots=True)
class Redirect:
    scheme: bytes
    host: str
    port: int
    chunks: tuple[int, ...] | None


@dataclass(slots=True)
class ReplayStats:
    replayed: int = 0
    overridden: int = 0
    live: int = 0
    missed: int = 0


@dataclass(slots=True)
class ReplayConfig:
    recording: Recording
    ignore: tuple[Pointer, ...]
    on_miss: str
    pace: str
    overrides: dict[int, tuple[Path, CannedResponse]] = field(default_factory=dict)


class Replayer:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.config: ReplayConfig | None = None
        self.index: ReplayIndex | None = None
        self.server: ReplayServer | None = None
        self.redirects: dict[str, Redirect] = {}
        # The step `--override N` counts: a request that matches the recording, or, once a fork has
        # happened, any request (the run has left the recording). A request the recording never had
        # before the fork (a health check, telemetry) does not shift the step being forked.
        self.step = 0
        self.stats = ReplayStats()

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option(
            "failcore_replay", str, "", "Replay this recorded run: TAPE_DIR[:RUN] (default run: the last)."
        )
        loader.add_option(
            "failcore_replay_on_miss", str, "live", "Unmatched requests: live (forward) or fail (599)."
        )
        loader.add_option(
            "failcore_replay_pace", str, "fast", "Streamed answers: fast, or recorded (the recorded timing)."
        )
        loader.add_option(
            "failcore_replay_override",
            Sequence[str],
            [],
            "N=FILE: answer step N (the N-th request matching the recording) with FILE.",
        )
        loader.add_option(
            "failcore_replay_ignore",
            Sequence[str],
            [],
            "JSON pointers left out when matching request bodies, besides the defaults ('*': any key).",
        )

    def configure(self, updated: set[str]) -> None:
        names = {n for n in updated if n.startswith("failcore_replay")}
        if not names:
            return
        opts = ctx.options
        if opts.failcore_replay_on_miss not in ("live", "fail"):
            raise exceptions.OptionsError("failcore_replay_on_miss must be live or fail")
        if opts.failcore_replay_pace not in ("fast", "recorded"):
            raise exceptions.OptionsError("failcore_replay_pace must be fast or recorded")
        if not opts.failcore_replay:
            if opts.failcore_replay_override:
                raise exceptions.OptionsError("failcore_replay_override needs failcore_replay")
            self.config = self.index = None
            self.session.replay_of = None
            return
        if self.server is not None:
            raise exceptions.OptionsError("replay options cannot change while the proxy runs")
        try:
            pointers = (*DEFAULT_IGNORED_POINTERS, *opts.failcore_replay_ignore)
            ignore = tuple(parse_pointer(p) for p in pointers)
            tape, run = parse_replay_source(opts.failcore_replay)
            recording = load_recording(tape, run, ignore)
            overrides = parse_overrides(opts.failcore_replay_override)
        except ValueError as e:
            raise exceptions.OptionsError(str(e)) from None
        self.config = ReplayConfig(
            recording, ignore, opts.failcore_replay_on_miss, opts.failcore_replay_pace, overrides
        )
        self.index = ReplayIndex(recording.exchanges)
        self.session.replay_of = {
            "tape": str(recording.tape),
            "run": recording.run,
            "on_miss": self.config.on_miss,
            "pace": self.config.pace,
            "overrides": {str(n): str(p) for n, (p, _) in sorted(overrides.items())},
        }
        if opts.connection_strategy == "eager":
            # Eager mode opens the upstream connection at CONNECT time, before a request can be matched.
            opts.update(connection_strategy="lazy")

    @guarded("replayer.running")
    async def running(self) -> None:
        if self.config is not None and self.server is None:
            self.server = ReplayServer(self.config.pace)
            await self.server.start()

    def done(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.config is not None:
            s = self.stats
            logger.info(
                "failcore replay of %s: %d replayed, %d overridden, %d live, %d refused",
                self.config.recording.run,
                s.replayed,
                s.overridden,
                s.live,
                s.missed,
            )

    def _host(self, flow: http.HTTPFlow) -> str:
        state = self.session.flows.get(flow.id)
        return (state.decided_host if state and state.decided_host else None) or flow.request.host

    @guarded("replayer.request")
    def request(self, flow: http.HTTPFlow) -> None:
        if self.config is None or self.index is None or self.server is None or flow.response is not None:
            return
        state = self.session.state(flow)
        req = flow.request
        if req.stream:
            state.replay = self._live("the request body was streamed upstream before it could be matched")
            return
        if req.headers.get("upgrade"):
            state.replay = self._live("protocol upgrades (WebSocket) are not replayed")
            return
        live = RequestShape.make(
            req.method,
            req.scheme,
            self._host(flow),
            req.port,
            req.path,
            normalize_body(req.get_content(strict=False) or b"", self.config.ignore),
        )
        source = self.index.take(live)
        override = None
        if source is not None or self.stats.overridden:
            self.step += 1
            override = self.config.overrides.get(self.step)
        if override is not None:
            path, canned = override
            self.stats.overridden += 1
            source_seq = source.seq if source else None
            state.replay = {"mode": "override", "source_seq": source_seq, "override": str(path)}
            self._serve(flow, canned)
        elif source is not None and source.response is not None:
            self.stats.replayed += 1
            state.replay = {"mode": "replayed", "source_seq": source.seq}
            self._serve(flow, source.response)
        else:
            reason = source.unservable if source is not None else "no recorded request matches"
            self._miss(flow, live, source, reason or "no recorded request matches")

    def _live(self, reason: str) -> dict[str, Any]:
        self.stats.live += 1
        return {"mode": "live", "source_seq": None, "reason": reason}

    def _miss(
        self, flow: http.HTTPFlow, live: RequestShape, source: RecordedExchange | None, reason: str
    ) -> None:
        assert self.config is not None and self.index is not None
        state = self.session.state(flow)
        if self.config.on_miss == "live":
            state.replay = self._live(reason)
            return
        self.stats.missed += 1
        # failcore answers a refused miss itself: it is no LLM call, whatever the meter expected.
        state.llm = None
        closest = source or self.index.closest(live)
        state.replay = {"mode": "miss", "source_seq": closest.seq if closest else None, "reason": reason}
        flow.response = http.Response.make(
            MISS_STATUS,
            orjson.dumps(miss_body(live, closest, reason)),
            {"Content-Type": "application/json", "X-FailCore-Replay": "miss"},
        )

    def _serve(self, flow: http.HTTPFlow, canned: CannedResponse) -> None:
        assert self.server is not None
        req = flow.request
        self.redirects[flow.id] = Redirect(req.data.scheme, req.data.host, req.data.port, canned.chunks)
        req.headers[TOKEN_HEADER] = self.server.register(canned)
        # Written to `data` directly: the host/port setters would also rewrite the Host header.
        req.data.scheme = b"http"
        req.data.host = "127.0.0.1"
        req.data.port = self.server.port

    def _restore(self, flow: http.HTTPFlow) -> Redirect | None:
        redirect = self.redirects.pop(flow.id, None)
        if redirect is not None:
            req = flow.request
            req.data.scheme, req.data.host, req.data.port = redirect.scheme, redirect.host, redirect.port
            req.headers.pop(TOKEN_HEADER, None)
        return redirect

    @guarded("replayer.responseheaders")
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        redirect = self._restore(flow)
        if redirect is None or redirect.chunks is None or flow.response is None:
            return
        inner = flow.response.stream
        if not callable(inner):
            tap = BodyTap(ctx.options.failcore_body_cap)
            self.session.state(flow).response_tap = tap
            inner = tap
        flow.response.stream = Rechunker(redirect.chunks, inner)

    @guarded("replayer.error")
    def error(self, flow: http.HTTPFlow) -> None:
        self._restore(flow)


# ---------------------------------------------------------------- what a replay saved


def replay_savings(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Calls a replay run answered from its tape, and the tokens and dollars those calls would have
    cost (from their `llm` blocks; None when no replayed call had known usage or a price)."""
    out: dict[str, Any] = {"calls": 0, "input_tokens": None, "output_tokens": None, "usd": None}
    for event in events:
        if event.get("kind") != "network" or (event.get("replay") or {}).get("mode") != "replayed":
            continue
        out["calls"] += 1
        llm = event.get("llm") or {}
        usage = llm.get("usage") or {}
        for name in ("input_tokens", "output_tokens"):
            if usage.get("known") and isinstance(usage.get(name), int):
                out[name] = (out[name] or 0) + usage[name]
        usd = (llm.get("cost") or {}).get("usd")
        if isinstance(usd, int | float):
            out["usd"] = round((out["usd"] or 0.0) + usd, 6)
    return out
