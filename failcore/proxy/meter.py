"""LlmMeter: knows which flows are LLM calls, what they used and what they cost.

Usage is extracted on the event loop, at the moment a response ends, so the next request already
sees it (budgets). An SSE or NDJSON response is metered chunk by chunk by `SseUsageTracker`, which
keeps O(1) state, so a stream is never buffered to learn its usage (a compressed one is inflated piece
by piece on the way, every coding of a stack: streamcopy.StreamInflater); over the first
`failcore_body_cap` bytes (what the tape keeps) it keeps the text and tool inputs too, and a stream no
longer than that is parsed once: the call is built from the tracker, not the tap's copy. A JSON answer
that streams through only because it has no Content-Length (how OpenAI and Anthropic send JSON:
chunked, usually gzip'd) is copied aside as it passes, up to `failcore_llm_body_max`, and metered
whole at its end exactly like a buffered one: the framing never changes what is metered. Everything
else about the call (contract drift, the serialised evidence) is left to the tape writer's thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http

from failcore.evidence import (
    DECODE_LIMIT,
    is_encoded,
    read_off_loop,
)
from failcore.llm import (
    CostResult,
    LlmCall,
    PriceTable,
    SseUsageTracker,
    compute_cost,
    detect_api,
    parse_call,
)
from failcore.llm.detect import request_model
from failcore.llm.prices import (
    cost_warnings,
    genai_source,
    load_price_table,
    priced_by_genai,
    seen_cost,
    warm_up_genai_prices,
)
from failcore.proxy.cutoff import CutVerdict
from failcore.proxy.guard import guarded
from failcore.proxy.session import BodyTap, FlowState, Session
from failcore.proxy.streamcopy import (
    StreamInflater,
    WholeBodyCopy,
    message_encoding,
    read_request,
    weighed_answer,
)
from failcore.proxy.streamtap import could_be_llm_path, request_streams, response_streams
from failcore.proxy.switchinterval import LOWERED_SWITCH_INTERVAL

logger = logging.getLogger("failcore")

# Bodies above this, or decoding past it, are parsed in a worker thread rather than on the event loop.
PARSE_OFF_LOOP_BYTES = 128 * 1024


def _metered_as_events(content_type: str) -> bool:
    """SSE and NDJSON are metered event by event; anything else (JSON) whole."""
    media = content_type.lower()
    return "event-stream" in media or "ndjson" in media


@dataclass(slots=True)
class LlmFlow:
    provider: str
    api: str
    request_model: str | None
    tracker: SseUsageTracker | None = None
    # What undoes an encoded metered stream's codings for the tracker (its `undecoded` bytes: a budget's).
    inflater: StreamInflater | None = None
    # A JSON answer streamed for lack of a length, copied aside to be metered whole.
    whole_copy: WholeBodyCopy | None = None
    # Parsed once when the request is recognised, reused when the response is metered.
    request_json: dict[str, Any] | None = None
    call: LlmCall | None = None
    cost: CostResult | None = None
    warnings: list[dict[str, str]] = field(default_factory=list)
    evidence: dict[str, Any] | None = None
    # What budgets count: the cost, or for a stream abandoned before its final usage, what the
    # tokens seen so far cost (the evidence's cost stays null: it is not the bill).
    charge_usd: float | None = None
    # Set once BudgetGuard has counted this call, so no hook ordering can count it twice.
    charged: bool = False
    # The request had a body failcore could not read (not JSON even to Python's parser, or past
    # `failcore_llm_body_max`): its model is unknown, and a model-scoped budget counts it.
    model_unknown: bool = False
    # The bodies' sizes as their receivers decode them, where read whole (weighed): what a budget weighs
    # a body it could not read by (a Bedrock event stream, a coding failcore does not undo), never its
    # compressed size. `response_unread`: the answer's codings could not be undone (or it decodes past
    # the limit), so its text was not read.
    request_size: int | None = None
    response_size: int | None = None
    response_unread: bool = False


def _tracked_call(meter: LlmFlow, flow: http.HTTPFlow, tap: BodyTap) -> LlmCall | None:
    """parse_call over the tap's copy, built from what the tracker folded as the stream passed; None
    unless the copy is whole (SseUsageTracker.streamed_call: and every byte the tracker read)."""
    if meter.tracker is None or tap.size != len(tap.kept) or flow.response is None:
        return None
    return meter.tracker.streamed_call(
        path=flow.request.path,
        status=flow.response.status_code,
        request_json=meter.request_json,
        content_type=flow.response.headers.get("content-type"),
        seen=tap.size,
    )


async def _settled(copy: WholeBodyCopy, then: Callable[[], Awaitable[None] | None]) -> None:
    """`then` once a copy past its limit has decoded what it kept (a step per loop turn: settle)."""
    await copy.settle()
    pending = then()
    if pending is not None:
        await pending


def llm_evidence(flow_llm: LlmFlow, table: PriceTable) -> dict[str, Any]:
    call = flow_llm.call
    cost = flow_llm.cost
    assert call is not None
    return {
        "provider": call.provider,
        "api": call.api,
        "request_model": call.request_model,
        "response_model": call.response_model,
        "stream": call.stream,
        "usage": {
            "known": call.usage_known,
            "input_tokens": call.input_tokens,
            "output_tokens": call.output_tokens,
            "total_tokens": call.total_tokens,
            "cached_input_tokens": call.cached_input_tokens,
            "cache_write_tokens": call.cache_write_tokens,
            "cache_write_1h_tokens": call.cache_write_1h_tokens,
            "reasoning_tokens": call.reasoning_tokens,
        },
        "finish_reason": call.finish_reason,
        "tool_calls": call.tool_calls,
        "response_format": call.response_format,
        "service_tier": call.service_tier,
        "cost": {
            "usd": cost.usd if cost else None,
            "reason": cost.reason if cost else "usage_unknown",
            "priced_as": cost.priced_as if cost else None,
            "source": cost.source if cost else None,
            "price_table_as_of": (
                str(table.as_of) if table.as_of and cost and cost.source != genai_source() else None
            ),
        },
    }


class LlmMeter:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.prices: PriceTable = load_price_table()
        self._prices_from: object = None
        self._warm_up_timer: asyncio.TimerHandle | None = None
        self._warming = False
        # Requests seen, and how many there were when the idle check last looked.
        self._requests = 0
        self._requests_checked = 0

    def running(self) -> None:
        # genai-prices takes seconds to import: loaded in a thread so the first LLM call is not priced
        # (and recorded) seconds late, but after start-up rather than during it: at the first request
        # that could be an LLM call, or once the proxy is idle (no request for PRICES_IDLE_S, nothing
        # in flight) from PRICES_WARM_UP_DELAY_S after start: its CPU (and the GIL it holds) is not
        # spent in the middle of a user's first exchanges. A short run (`failcore run -- true`) does
        # not pay for it.
        if not self._warming and self._warm_up_timer is None:
            loop = asyncio.get_running_loop()
            self._requests_checked = self._requests
            self._warm_up_timer = loop.call_later(PRICES_WARM_UP_DELAY_S, self._warm_up_when_idle)

    def _warm_up_when_idle(self) -> None:
        self._warm_up_timer = None
        if self._warming:
            return
        busy = self._requests != self._requests_checked or bool(self.session.flows)
        if busy:
            self._requests_checked = self._requests
            loop = asyncio.get_running_loop()
            self._warm_up_timer = loop.call_later(PRICES_IDLE_S, self._warm_up_when_idle)
            return
        self.warm_up_prices()

    def warm_up_prices(self) -> None:
        if self._warm_up_timer is not None:
            self._warm_up_timer.cancel()
            self._warm_up_timer = None
        if self._warming:
            return
        self._warming = True
        threading.Thread(target=self._warm_up, name="failcore-prices-warmup", daemon=True).start()

    def _warm_up(self) -> None:
        _warm_up_prices()
        # ~42,000 objects that live as long as the proxy, loaded after the start-up freeze (gctune).
        self.session.heap_loads += 1

    def done(self) -> None:
        if self._warm_up_timer is not None:
            self._warm_up_timer.cancel()
            self._warm_up_timer = None

    def price_table(self) -> PriceTable:
        """The shipped table with the active policy's `prices:` on top (rebuilt when the policy is)."""
        overrides = self.session.policy.prices if self.session.policy is not None else None
        if overrides is not self._prices_from:
            self._prices_from = overrides
            self.prices = load_price_table(overrides=overrides or None)
        return self.prices

    @guarded("meter.requestheaders")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """An LLM call's request body that will stream through (not held: observe mode, a chunked upload,
        mitmproxy's `stream_large_bodies`) is copied aside as it passes, up to `failcore_llm_body_max`,
        and metered at its end like a whole one: streaming a request does not make the call free. Other
        uploads are not copied (they stream chunk by chunk, as before)."""
        if flow.response is not None or flow.metadata.get("failcore_held"):
            return
        stream = flow.request.stream
        if callable(stream):
            return
        if stream is not True and not request_streams(
            flow, self.session.settings, self.session.flows.get(flow.id)
        ):
            return
        if not could_be_llm_path(flow.request.path):
            return
        state = self.session.state(flow)
        copy = WholeBodyCopy(self.session.settings.llm_body_max, message_encoding(flow.request))
        state.request_copy = copy
        state.request_observers.append(copy)

    @guarded("meter.request")
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        self._requests += 1
        if flow.response is not None or not could_be_llm_path(flow.request.path):
            return None
        if not self._warming:
            self.warm_up_prices()
        state = self.session.flows.get(flow.id)
        if state is None:
            return None
        if state.request_tap is not None:
            return self._detect_streamed(flow, state)
        return self._read(flow, state, flow.request.raw_content, message_encoding(flow.request))

    def _read(
        self, flow: http.HTTPFlow, state: FlowState, raw: bytes | None, encoding: str | None
    ) -> Awaitable[None] | None:
        """The request body read on the event loop when it is small, else in a worker thread (up to
        DECODE_LIMIT): a large one, or a small compressed one that decodes past PARSE_OFF_LOOP_BYTES (its
        model is read all the same, not left unknown, and no more is decoded on the loop than a plain
        body is parsed there)."""
        if not read_off_loop(len(raw or b""), encoding, PARSE_OFF_LOOP_BYTES):
            request_json, size = read_request(raw, encoding, PARSE_OFF_LOOP_BYTES)
            if request_json is not None or size < PARSE_OFF_LOOP_BYTES:
                self._detect(flow, state, request_json, size)
                return None
        return self._detect_off_loop(flow, state, raw, encoding)

    async def _detect_off_loop(
        self, flow: http.HTTPFlow, state: FlowState, raw: bytes | None, encoding: str | None
    ) -> None:
        self._detect(flow, state, *await asyncio.to_thread(read_request, raw, encoding, DECODE_LIMIT))

    def _detect_streamed(self, flow: http.HTTPFlow, state: FlowState) -> Awaitable[None] | None:
        """A streamed request, from the copy taken as it passed (none past the limit: then the call is
        recognised by its host and path alone, its model unknown, and charged by the bytes streamed, or
        what they decode to as they passed)."""
        copy = state.request_copy
        if isinstance(copy, WholeBodyCopy) and not copy.settled:
            return _settled(copy, lambda: self._detect_streamed(flow, state))
        if not isinstance(copy, WholeBodyCopy) or copy.overflow:
            size = copy.size if isinstance(copy, WholeBodyCopy) else None
            self._detect(flow, state, None, size, unreadable=True)
            return None
        state.request_copy = None
        return self._read(flow, state, bytes(copy.data), message_encoding(flow.request))

    def _detect(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        request_json: dict[str, Any] | None,
        size: int | None = None,
        *,
        unreadable: bool = False,
    ) -> None:
        host = f"{state.decided_host or flow.request.host}:{flow.request.port}"
        if request_json is None and not unreadable:
            streamed = state.request_tap.size if state.request_tap is not None else 0
            unreadable = bool(flow.request.raw_content) or streamed > 0
        detected = detect_api(host, flow.request.path, request_json, unreadable=unreadable)
        if detected is None:
            return
        # The model the request names, in its body or (Gemini, Azure, Bedrock) its path: a budget's
        # model scope. A body that could not be read names an unknown model (a batch of several models
        # too), which every model-scoped budget counts: failcore never sees less than the upstream.
        model = request_model(detected[0], detected[1], flow.request.path, request_json)
        unknown = model is None and (unreadable or detected[1] == "message_batches")
        state.llm = LlmFlow(
            detected[0],
            detected[1],
            model,
            request_json=request_json,
            model_unknown=unknown,
            request_size=size,
        )

    @guarded("meter.responseheaders")
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self.session.flows.get(flow.id)
        if state is None or state.llm is None or flow.response is None:
            return
        if not response_streams(flow, state, self.session.settings):
            return
        headers = flow.response.headers
        if not _metered_as_events(headers.get("content-type", "")):
            copy = WholeBodyCopy(self.session.settings.llm_body_max, message_encoding(flow.response))
            state.llm.whole_copy = copy
            state.stream_observers.append(copy)
            return
        encoding = message_encoding(flow.response) or ""
        # Unencoded, the tracker keeps the content the tap's copy would give (parsed once: _meter).
        content = 0 if is_encoded(encoding) else self.session.settings.body_cap
        tracker = SseUsageTracker(state.llm.provider, state.llm.api, content)
        state.llm.tracker = tracker
        feed: Callable[[bytes], None] = tracker.feed
        if is_encoded(encoding):
            feed = state.llm.inflater = StreamInflater(encoding, tracker.feed)
        # A guard, not an observer: it must see a chunk before it is forwarded, so a budget can stop the
        # stream at the chunk whose usage crosses the limit.
        state.cut_guards.append(self._metering_guard(feed))

    def _metering_guard(self, feed: Callable[[bytes], None]) -> Callable[[bytes], CutVerdict | None]:
        def meter(chunk: bytes) -> CutVerdict | None:
            feed(chunk)
            return None

        return meter

    @guarded("meter.response")
    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        state = self.session.flows.get(flow.id)
        if state is None or state.llm is None or flow.response is None or state.blocked:
            return None
        return self._meter(flow, state)

    @guarded("meter.error")
    def error(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """A stream that ended in an error was still (partly) generated and billed. SDKs close the
        connection as soon as they read the final event (the OpenAI SDK at `[DONE]`), which mitmproxy
        may see before the end of the HTTP message: that call must be metered like any other."""
        state = self.session.flows.get(flow.id)
        if (
            state is None
            or state.llm is None
            or (state.llm.tracker is None and state.llm.whole_copy is None)
            or state.llm.call is not None
            or flow.response is None
            or state.blocked
        ):
            return None
        return self._meter(flow, state)

    def _meter(self, flow: http.HTTPFlow, state: FlowState) -> Awaitable[None] | None:
        assert state.llm is not None and flow.response is not None
        if state.llm.whole_copy is not None and not state.llm.whole_copy.settled:
            return _settled(state.llm.whole_copy, lambda: self._meter(flow, state))
        tap = state.response_tap
        copy = state.llm.whole_copy
        encoding = message_encoding(flow.response)
        decode_later = False
        raw: bytes | None = None
        response_body: bytes | None = None
        if tap is None or (copy is not None and not copy.overflow):
            # Held whole by mitmproxy, or copied whole as it streamed: metered the same way.
            raw = flow.response.raw_content if tap is None or copy is None else bytes(copy.data)
            decode_later = read_off_loop(len(raw or b""), encoding, PARSE_OFF_LOOP_BYTES)
            if not decode_later:
                response_body, size, unread = weighed_answer(raw, encoding, PARSE_OFF_LOOP_BYTES)
                state.llm.response_size, state.llm.response_unread = size, unread
                # A small compressed answer that decodes past PARSE_OFF_LOOP_BYTES: read off the loop.
                decode_later = response_body is None and bool(raw)
        elif not is_encoded(encoding):
            # The capped copy gives the response model and text; usage comes from the tracker,
            # which saw every chunk even past the cap. A whole copy of what it saw, it has read already.
            tracked = _tracked_call(state.llm, flow, tap)
            if tracked is not None:
                return self._account(state.llm, tracked)
            response_body = bytes(tap.kept)
        args = dict(
            host=f"{state.decided_host or flow.request.host}:{flow.request.port}",
            path=flow.request.path,
            # (read at request time, request_json: a body that was not a JSON object then is not now)
            request_body=None,
            response_body=response_body,
            response_content_type=flow.response.headers.get("content-type"),
            status=flow.response.status_code,
            request_json=state.llm.request_json,
            detected=(state.llm.provider, state.llm.api),
        )
        if decode_later:
            return self._account_off_loop(state.llm, args, (raw, encoding))
        if len(response_body or b"") > PARSE_OFF_LOOP_BYTES:
            return self._account_off_loop(state.llm, args)
        return self._account(state.llm, parse_call(**args))

    async def _account_off_loop(
        self,
        meter: LlmFlow,
        args: dict[str, Any],
        undecoded: tuple[bytes | None, str | None] | None = None,
    ) -> None:
        def parse() -> tuple[LlmCall | None, tuple[int, bool] | None]:
            if undecoded is None:
                return parse_call(**args), None
            args["response_body"], size, unread = weighed_answer(undecoded[0], undecoded[1], DECODE_LIMIT)
            return parse_call(**args), (size, unread)

        call, weight = await asyncio.to_thread(parse)
        if weight is not None:
            meter.response_size, meter.response_unread = weight
        pricing = self._account(meter, call)
        if pricing is not None:
            await pricing

    def _account(self, meter: LlmFlow, call: LlmCall | None) -> Awaitable[None] | None:
        if call is None:
            return None
        if meter.tracker is not None:
            tracker = meter.tracker
            tracker.finish()
            call.stream = True
            call.apply_usage(tracker.current)
            call.finish_reason = tracker.finish_reason or call.finish_reason
            call.service_tier = tracker.service_tier or call.service_tier
            # A compressed stream leaves no readable copy: the tracker saw the model go by.
            call.response_model = call.response_model or tracker.response_model
            call.tool_calls = max(tracker.tool_calls, call.tool_calls)
            call.response_id = call.response_id or tracker.response_id
        meter.call = call
        prices = self.price_table()
        if priced_by_genai(call, prices):
            # genai-prices takes ~1 ms of CPU per call (measured: benchmarks/bench_prices.py): a worker
            # thread does it, and the hooks after this one wait for it, so budgets still see the cost.
            return self._price_off_loop(meter, call, prices)
        self._settle(meter, call, prices, *_cost_and_charge(call, prices))
        return None

    async def _price_off_loop(self, meter: LlmFlow, call: LlmCall, prices: PriceTable) -> None:
        cost, charge = await asyncio.to_thread(_cost_and_charge, call, prices)
        self._settle(meter, call, prices, cost, charge)

    def _settle(
        self, meter: LlmFlow, call: LlmCall, prices: PriceTable, cost: CostResult, charge: float | None
    ) -> None:
        meter.cost = cost
        meter.charge_usd = charge
        meter.warnings = cost_warnings(call, cost)
        meter.evidence = llm_evidence(meter, prices)


PRICES_WARM_UP_DELAY_S = 2.0
# The warm-up waits for this long without a request (checked again after each busy period).
PRICES_IDLE_S = 1.0


def _warm_up_prices() -> None:
    with LOWERED_SWITCH_INTERVAL:
        try:
            warm_up_genai_prices()
        except Exception as exc:  # pricing then happens (slower) on the first call; never fatal
            logger.warning("failcore: could not preload genai-prices: %s", exc)


def _cost_and_charge(call: LlmCall, prices: PriceTable) -> tuple[CostResult, float | None]:
    cost = compute_cost(call, prices)
    return cost, cost.usd if cost.usd is not None else seen_cost(call, prices)
