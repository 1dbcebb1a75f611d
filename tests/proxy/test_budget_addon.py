"""BudgetGuard through mitmproxy's addon harness: a request budget admits, then refuses (enforce) or
warns (observe), and what a refused request reserved is given back."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import orjson
import pytest
from mitmproxy.test import tflow, tutils

from failcore.proxy.budgetguard import BudgetGuard
from failcore.proxy.gate import PolicyGate
from tests.addon_harness import Harness, concerns

TWO_REQUESTS = """\
version: 1
mode: {mode}
default: ALLOW
budgets:
  - id: two-requests
    window: run
    limits: {{requests: 2}}
"""


def ask(h: Harness) -> tflow.HTTPFlow:
    flow = tflow.tflow(req=tutils.treq(host="api.example.com", port=443, scheme=b"https", path=b"/v1/x"))
    h.hooks(flow, "requestheaders", "request")
    return flow


@pytest.fixture
def guarded(tmp_path: Path, confdir: Path) -> Callable[[str], AbstractContextManager[Harness]]:
    """The policy gate and the budget guard in the harness, under TWO_REQUESTS in the mode asked for."""

    def start(mode: str) -> AbstractContextManager[Harness]:
        path = tmp_path / f"{mode}.yaml"
        path.write_text(TWO_REQUESTS.format(mode=mode))
        return concerns(
            PolicyGate,
            BudgetGuard,
            confdir=confdir,
            failcore_policy=str(path),
            failcore_state_dir=str(tmp_path / "state"),
        )

    return start


def test_enforced_request_budget_refuses_the_third(guarded) -> None:  # type: ignore[no-untyped-def]
    with guarded("enforce") as h:
        first, second, third = ask(h), ask(h), ask(h)
        assert first.response is None and second.response is None
        assert third.response is not None and third.response.status_code == 429
        assert third.response.headers["X-FailCore-Decision"] == "BLOCK"
        assert orjson.loads(third.response.content)["error"]["type"] == "failcore_budget_exceeded"
        decision = h.state(third).decision
        assert decision is not None and decision.decision == "BLOCK"
        assert decision.rule == "budget:two-requests"
        assert h.state(third).blocked is True
        assert [w["reason"] for w in h.state(third).warnings] == ["budget_exceeded"]
        assert h.session.internal_errors == 0


def test_observed_request_budget_warns_and_forwards(guarded) -> None:  # type: ignore[no-untyped-def]
    with guarded("observe") as h:
        flows = [ask(h) for _ in range(3)]
        assert [f.response for f in flows] == [None, None, None]
        decision = h.state(flows[2]).decision
        assert decision is not None and decision.decision == "WARN" and decision.rule == "budget:two-requests"
        assert h.state(flows[0]).warnings == []


def test_a_request_refused_later_gives_its_reservation_back(guarded) -> None:  # type: ignore[no-untyped-def]
    with guarded("enforce") as h:
        refused = ask(h)
        h.state(refused).blocked = True  # say the DLP guard refused it after the budget admitted it
        refused.response = tutils.tresp(status_code=403)
        h.hooks(refused, "response")
        assert ask(h).response is None and ask(h).response is None  # still two requests left
        assert ask(h).response is not None
