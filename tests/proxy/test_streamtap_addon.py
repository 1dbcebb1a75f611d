"""StreamTap through mitmproxy's addon harness: which bodies stream, what the tap keeps of them (the
`failcore_body_cap` option) and that a registered cut guard sees every chunk first."""

from __future__ import annotations

from pathlib import Path

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import tflow, tutils

from failcore.proxy.cutoff import CuttingTap
from failcore.proxy.gate import PolicyGate
from failcore.proxy.session import BodyTap
from failcore.proxy.streamtap import StreamTap
from tests.addon_harness import Harness, concerns

SSE = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]


def sse_flow(h: Harness) -> http.HTTPFlow:
    flow = tflow.tflow(req=tutils.treq(host="api.example.com", port=443, scheme=b"https", path=b"/sse"))
    h.hooks(flow, "requestheaders", "request")
    flow.response = tutils.tresp(
        headers=http.Headers([(b"content-type", b"text/event-stream")]), content=None
    )
    return flow


def test_sse_streams_through_a_tap_that_keeps_a_capped_copy(confdir: Path) -> None:
    with concerns(PolicyGate, StreamTap, confdir=confdir, failcore_body_cap=12) as h:
        flow = sse_flow(h)
        h.hooks(flow, "responseheaders")
        tap = flow.response.stream  # type: ignore[union-attr]
        assert isinstance(tap, BodyTap) and h.state(flow).response_tap is tap
        assert [tap(chunk) for chunk in SSE] == SSE  # passed through untouched
        assert bytes(tap.kept) == b"".join(SSE)[:12]
        assert tap.size == sum(map(len, SSE)) and len(tap.chunks) == 3


def test_small_body_with_a_length_is_not_streamed(confdir: Path) -> None:
    with concerns(PolicyGate, StreamTap, confdir=confdir, failcore_stream_threshold=1000) as h:
        flow = tflow.tflow(req=tutils.treq(host="api.example.com", port=443, scheme=b"https"))
        h.hooks(flow, "requestheaders", "request")
        flow.response = tutils.tresp(content=b'{"ok": true}')
        h.hooks(flow, "responseheaders")
        assert not flow.response.stream and h.state(flow).response_tap is None
        big = tflow.tflow(req=tutils.treq(host="api.example.com", port=443, scheme=b"https"))
        h.hooks(big, "requestheaders", "request")
        big.response = tutils.tresp(headers=http.Headers([(b"content-length", b"5000")]), content=None)
        h.hooks(big, "responseheaders")
        assert isinstance(big.response.stream, BodyTap)


def test_cut_guards_see_each_chunk_before_it_is_forwarded(confdir: Path) -> None:
    with concerns(PolicyGate, StreamTap, confdir=confdir) as h:
        flow = sse_flow(h)
        seen: list[bytes] = []
        h.state(flow).cut_guards.append(lambda chunk: seen.append(chunk))  # type: ignore[func-returns-value]
        h.hooks(flow, "responseheaders")
        stream = flow.response.stream  # type: ignore[union-attr]
        assert isinstance(stream, CuttingTap)
        assert stream(SSE[0]) == SSE[0] and seen == [SSE[0]]
        assert bytes(h.state(flow).response_tap.kept) == SSE[0]  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["failcore_body_cap", "failcore_stream_threshold", "failcore_llm_body_max"])
def test_negative_sizes_are_refused(confdir: Path, name: str) -> None:
    with (
        concerns(StreamTap, confdir=confdir) as h,
        pytest.raises(exceptions.OptionsError, match=f"{name} must be >= 0"),
    ):
        h.configure(**{name: -1})


ENFORCE_WARN_DLP_BUDGET = """\
version: 1
mode: enforce
default: ALLOW
dlp:
  severity_actions: {critical: WARN, high: WARN}
budgets:
  - id: many
    window: run
    limits: {requests: 1000}
"""


def test_whether_a_request_streams_is_decided_once_per_flow(
    confdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hold, the budget and DLP guards and the stream tap all ask at requestheaders; they get one
    answer, computed once (it was computed by each of them), and act on it as before."""
    import failcore.proxy.streamtap as streamtap
    from failcore.proxy.budgetguard import BudgetGuard
    from failcore.proxy.dlpguard import DlpGuard
    from failcore.proxy.hold import RequestHold

    calls: list[str] = []
    real = streamtap.should_stream_request

    def counting(flow: http.HTTPFlow, *args: object) -> bool:
        calls.append(flow.id)
        return real(flow, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(streamtap, "should_stream_request", counting)
    policy = tmp_path / "enforce.yaml"
    policy.write_text(ENFORCE_WARN_DLP_BUDGET)
    with concerns(
        PolicyGate,
        RequestHold,
        BudgetGuard,
        DlpGuard,
        StreamTap,
        confdir=confdir,
        failcore_policy=str(policy),
        failcore_stream_threshold=1000,
        failcore_state_dir=str(tmp_path / "state"),
    ) as h:
        upload = tflow.tflow(
            req=tutils.treq(
                host="files.example.com",
                port=443,
                scheme=b"https",
                method=b"PUT",
                path=b"/bucket/blob",
                headers=http.Headers([(b"content-length", b"5000")]),
                content=None,
            )
        )
        h.hooks(upload, "requestheaders")
        state = h.state(upload)
        assert isinstance(upload.request.stream, BodyTap) and state.request_tap is upload.request.stream
        assert state.request_reserved_at is not None  # the budget admitted it before any byte left
        assert state.request_observers  # the DLP guard's past-cap scan sees the streamed body
        assert calls == [upload.id]

        small = tflow.tflow(req=tutils.treq(host="files.example.com", port=443, scheme=b"https"))
        h.hooks(small, "requestheaders")
        assert not small.request.stream and h.state(small).request_tap is None
        assert h.state(small).request_reserved_at is None  # admitted at `request`, once buffered
        assert calls == [upload.id, small.id]
