"""failcore's verdict is visible on each flow inside mitmproxy/mitmweb (comment and marker)."""

from __future__ import annotations

from typing import Any

from failcore.proxy.session import FlowState
from failcore.proxy.verdict import BLOCKED_MARK, WOULD_BLOCK_MARK, verdict_comment
from tests.helpers import proxied_client

POLICY = """
version: 1
mode: enforce
default: ALLOW
rules:
  - id: no-admin
    path: /status/**
    action: BLOCK
    reason: status pages are off limits
"""


class SeenAfterFailcore:
    """Added after failcore, as mitmweb's view sees a flow once every addon's hook has run."""

    def __init__(self) -> None:
        self.flows: dict[str, tuple[str, str]] = {}

    def response(self, flow: Any) -> None:
        self.flows[flow.request.path] = (flow.comment, flow.marked)


def test_each_flow_carries_failcores_verdict(start_proxy, policy_file, upstream) -> None:
    proxy = start_proxy(policy_file(POLICY))
    seen = SeenAfterFailcore()
    proxy.call(proxy.proxy.master.addons.add, seen)
    with proxied_client(proxy) as client:
        assert client.get(upstream.url + "/json").status_code == 200
        assert client.get(upstream.url + "/status/500").status_code == 403
        chat = client.post(
            upstream.url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-standin-usage": '{"input": 1200, "output": 30}'},
        )
        assert chat.status_code == 200
    proxy.flush()
    assert seen.flows["/json"] == ("failcore: ALLOW", "")
    comment, marked = seen.flows["/status/500"]
    assert comment == "failcore: BLOCK no-admin (status pages are off limits)" and marked == BLOCKED_MARK
    comment, marked = seen.flows["/v1/chat/completions"]
    assert comment.startswith("failcore: ALLOW · 1,200/30 tokens · $0.000") and "gpt-4o-mini" in comment
    assert marked == ""


def test_a_would_block_in_observe_mode_is_marked(start_proxy, policy_file, upstream) -> None:
    proxy = start_proxy(policy_file(POLICY.replace("mode: enforce", "mode: observe")))
    seen = SeenAfterFailcore()
    proxy.call(proxy.proxy.master.addons.add, seen)
    with proxied_client(proxy) as client:
        assert client.get(upstream.url + "/status/500").status_code == 500  # let through
    proxy.flush()
    comment, marked = seen.flows["/status/500"]
    assert comment == "failcore: WARN no-admin (status pages are off limits)" and marked == WOULD_BLOCK_MARK


def test_a_call_without_a_known_price_says_so() -> None:
    from failcore.llm.prices import CostResult
    from failcore.llm.usage import LlmCall
    from failcore.proxy.meter import LlmFlow

    llm = LlmFlow(provider="openai", api="chat", request_model="my-finetune")
    llm.call = LlmCall("openai", "chat", request_model="my-finetune", input_tokens=10, output_tokens=2)
    llm.cost = CostResult(usd=None, reason="unpriced_model")
    assert verdict_comment(FlowState(llm=llm)) == "failcore: ALLOW · 10/2 tokens · $? (my-finetune)"
