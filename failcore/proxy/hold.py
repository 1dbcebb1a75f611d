"""RequestHold: nothing leaves before the decision.

A request body that would stream (no Content-Length, e.g. a chunked upload; or one over the streaming
threshold) is forwarded chunk by chunk as it arrives, before the `request` hook where DLP, budgets and
metering read it: once mitmproxy streams a request it sends the headers upstream at once and never
consults the `request` hook's verdict. So where a decision needs the whole body, it is held instead:

- in enforce mode with a DLP rule that BLOCKs (and request scanning on);
- in enforce mode with budgets, on LLM API paths (a budget's model scope and usage come from the body;
  anywhere else BudgetGuard decides from the request line and headers, before anything streams);
- in enforce mode with a rule that names a method, a POST form's or JSON body's (a `_method` field
  overrides it);
- always with `fail_open: false` (a failure in any check must stop the request, not follow it).

A held body is buffered by mitmproxy up to `failcore_hold_max` bytes; one that declares more is refused
with 413 before a byte of it leaves, and one of unknown length found longer is refused once read. mitmproxy's
own `stream_large_bodies` would stream a body before these hooks run, or in the middle of one held: it
is taken over by failcore (failcore.proxy.settings), so every stream is failcore's own.
"""

from __future__ import annotations

import orjson
from mitmproxy import http

from failcore.policy.model import Decision
from failcore.proxy.guard import guarded
from failcore.proxy.overrides import is_form, is_json, names_a_method
from failcore.proxy.session import Session, answer
from failcore.proxy.streamtap import could_be_llm_path, request_streams

HELD = "failcore_held"
# Set on every request whose body the policy must read whole before it leaves (held, or buffered anyway):
# failcore.proxy.tail takes back a `stream` a script loaded after failcore asks for.
MUST_HOLD = "failcore_must_hold"


def hold_reason(session: Session, flow: http.HTTPFlow) -> str | None:
    """Why the active policy needs this request's body whole before forwarding it (None: it does not)."""
    policy = session.policy
    if policy is None:
        return None
    if not policy.fail_open:
        return "fail_open: false"
    if policy.mode != "enforce":
        return None
    scanner = session.dlp
    if scanner is not None and scanner.can_block and scanner.settings.scan_request:
        return "a DLP rule that blocks"
    if policy.budgets and could_be_llm_path(flow.request.path):
        return "a budget"
    req = flow.request
    if req.method == "POST" and names_a_method(policy):
        ctype = req.headers.get("content-type")
        if is_form(ctype) or is_json(ctype):
            return "a rule naming a method (a `_method` field in a form or JSON body)"
    return None


def is_held(flow: http.HTTPFlow) -> bool:
    return bool(flow.metadata.get(HELD))


def must_hold(flow: http.HTTPFlow) -> bool:
    """The policy reads this request's body whole before it is forwarded (held or buffered)."""
    return bool(flow.metadata.get(MUST_HOLD))


def _too_large(flow: http.HTTPFlow, size: int, limit: int, why: str) -> http.Response:
    body = orjson.dumps(
        {
            "error": {
                "type": "failcore_body_too_large",
                "message": f"failcore refused this request: its body ({size} bytes) is larger than "
                f"failcore_hold_max ({limit} bytes), and the policy ({why}) must read a body whole "
                "before forwarding it",
                "event": flow.id,
            }
        }
    )
    headers = {
        "Content-Type": "application/json",
        "X-FailCore-Decision": "BLOCK",
        "X-FailCore-Rule": "hold:too-large",
        "X-FailCore-Event": flow.id,
        "Connection": "close",
    }
    return http.Response.make(413, body, headers)


class RequestHold:
    def __init__(self, session: Session) -> None:
        self.session = session

    def _refuse(self, flow: http.HTTPFlow, size: int, why: str) -> None:
        limit = self.session.settings.hold_max
        state = self.session.state(flow)
        state.decision = Decision(
            "BLOCK",
            "hold:too-large",
            f"request body of {size} bytes over failcore_hold_max ({limit}); {why} needs it whole",
            True,
            "BLOCK",
        )
        state.blocked = True
        answer(flow, _too_large(flow, size, limit, why))

    def idle_hooks(self) -> frozenset[str]:
        """`requestheaders` holds nothing while `hold_reason` has no reason for any request
        (failcore.proxy.dispatch). `request` is kept: it acts on a mark `requestheaders` left, maybe
        under the policy before a reload."""
        policy = self.session.policy
        if policy is None or (policy.fail_open and policy.mode != "enforce"):
            return frozenset({"requestheaders"})
        return frozenset()

    @guarded("hold.requestheaders")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        why = hold_reason(self.session, flow)
        if why is None:
            return
        flow.metadata[MUST_HOLD] = True
        if flow.request.stream:
            # Another addon (a script before failcore) asked for a stream: the decision comes first.
            # (mitmproxy's own stream_large_bodies is taken over by failcore.proxy.settings.)
            flow.request.stream = False
        settings = self.session.settings
        if not request_streams(flow, settings, self.session.flows.get(flow.id)):
            return  # buffered anyway
        declared = flow.request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.hold_max:
            self._refuse(flow, int(declared), why)
            return
        flow.metadata[HELD] = True

    @guarded("hold.request")
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not is_held(flow):
            return
        size = len(flow.request.raw_content or b"")
        if size > self.session.settings.hold_max:
            self._refuse(flow, size, hold_reason(self.session, flow) or "the policy")
