"""Which concerns a hook calls (failcore.proxy.dispatch).

A concern the dispatch leaves out under a policy must be one whose hook would have done nothing. The
whole addon as it ships and the same addon calling every concern's hook, as mitmproxy would call them
as separate addons, take the same recorded LLM exchanges (tests/data/conformance) and varied plain ones
under policies that switch each left-out concern on and off: what they record and what they leave on
each flow must be the same. Under the shipped default policy the left-out concerns are not called at
all, and a policy reload brings them back.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import hooks, http
from mitmproxy.addonmanager import Loader
from mitmproxy.test import taddons, tflow, tutils

from failcore.dlp.pending import wait_until_built
from failcore.policy.load import parse_policy
from failcore.proxy import FailCore
from failcore.proxy.budgetguard import BudgetGuard
from failcore.proxy.dispatch import pruned_dispatcher
from failcore.proxy.guard import guarded
from failcore.proxy.hold import RequestHold
from failcore.proxy.hostdlp import HostDlpGuard
from failcore.proxy.realtime import RealtimeBudget
from failcore.proxy.replayer import Replayer
from failcore.proxy.resolved import ResolvedAddressGuard
from failcore.proxy.session import Session
from tests.dlp_corpus import chat_body, load_samples
from tests.helpers import github_token, read_tape
from tests.security.budget_helpers import token_budget

# A secret (gitleaks' github-pat format), the same in every run of this module.
TOKEN = github_token()
CASSETTES = Path(__file__).parent / "data" / "conformance" / "llm" / "openllmetry-cassettes.jsonl"
EXCHANGE_HOOKS = ("requestheaders", "request", "responseheaders", "response", "error")
# What a plain exchange calls under the shipped default policy before the dispatch left it out.
LEFT_OUT = {
    (ResolvedAddressGuard, "requestheaders"),
    (HostDlpGuard, "requestheaders"),
    (RequestHold, "requestheaders"),
    (BudgetGuard, "requestheaders"),
    (BudgetGuard, "request"),
    (BudgetGuard, "responseheaders"),
    (BudgetGuard, "response"),
    (RealtimeBudget, "request"),
    (Replayer, "request"),
    (Replayer, "responseheaders"),
}

POLICIES = {
    "default": None,
    "strict": "strict",
    "observe-budget": token_budget(2000, mode="observe"),
    "enforce-budget": token_budget(2000),
    "resolved": "version: 1\nmode: enforce\ndefault: ALLOW\nnetwork:\n  block_private_resolved: true\n",
    "fail-closed": "version: 1\nmode: observe\ndefault: ALLOW\nfail_open: false\n",
    "dlp-block": "version: 1\nmode: enforce\ndefault: ALLOW\ndlp:\n  default_action: BLOCK\n",
    "observe-dlp-block": "version: 1\nmode: observe\ndefault: ALLOW\ndlp:\n  default_action: BLOCK\n",
}
# Differ from one run to the next whatever the dispatch does: times (a streamed chunk's too: its size
# stays), the run id, the tape's place and the hash chain and signature through them.
VOLATILE = {
    "run",
    "ts_start",
    "ts_end",
    "ts",
    "latency_ms",
    "ttfb_ms",
    "duration_s",
    "h",
    "prev",
    "sig",
    "tape",
}


def recorded_exchanges() -> list[dict[str, Any]]:
    """A few of each provider's recorded exchanges, JSON and streamed, from hosts that resolve here
    without a network (the resolved-address guard looks every target up)."""
    exchanges = [json.loads(line) for line in CASSETTES.read_text(encoding="utf-8").splitlines() if line]
    picked: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in exchanges:
        kind = (e["response_headers"].get("content-type") or "").split(";")[0]
        host = e["host"].rsplit(":", 1)[0]
        if host.endswith((".com", ".ai", ".xyz")) or host in ("localhost", "127.0.0.1"):
            group = picked.setdefault((host, kind), [])
            if len(group) < 2:
                group.append(e)
    return [e for group in picked.values() for e in group]


def exchange_flow(exchange: dict[str, Any]) -> tuple[http.HTTPFlow, http.Response, list[bytes] | None]:
    host, port = exchange["host"].rsplit(":", 1)
    request = tutils.treq(
        host=host,
        port=int(port),
        scheme=b"https" if port == "443" else b"http",
        method=exchange["method"].encode(),
        path=exchange["path"].encode(),
        headers=http.Headers([(b"content-type", b"application/json")]),
        content=exchange["request_body"].encode(),
    )
    flow = tflow.tflow(req=request)
    kind = exchange["response_headers"].get("content-type") or "application/json"
    body = exchange["response_body"].encode()
    response = tutils.tresp(
        status_code=exchange["status"], headers=http.Headers([(b"content-type", kind.encode())]), content=body
    )
    chunks = [body[i : i + 97] for i in range(0, len(body), 97)] if "stream" in kind else None
    return flow, response, chunks


def plain_flows() -> list[tuple[http.HTTPFlow, http.Response | None, list[bytes] | None]]:
    """The throughput benchmark's exchange, a GET, requests with a secret in their body, in their query
    and in their Host header, a realtime (WebSocket) upgrade, a response that never came."""
    rng = random.Random(12)
    secrets = [s.text for s in load_samples() if s.secret][::997][:3]
    out: list[tuple[http.HTTPFlow, http.Response | None, list[bytes] | None]] = []
    for host, method, path, body, extra in (
        ("127.0.0.1", "POST", "/echo", json.dumps({"data": "x" * 1000}).encode(), []),
        ("127.0.0.1", "GET", "/status?verbose=1", b"", []),
        *(("127.0.0.1", "POST", "/v1/notes", chat_body(text), []) for text in secrets),
        ("127.0.0.1", "GET", f"/lookup?q={secrets[0]}", b"", []),
        ("127.0.0.1", "GET", "/", b"", [(b"host", f"{TOKEN}.example.com".encode())]),
        (
            "api.openai.com",
            "GET",
            "/v1/realtime?model=gpt-4o-realtime-preview",
            b"",
            [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"), (b"sec-websocket-version", b"13")],
        ),
    ):
        headers = [(b"content-type", b"application/json"), (b"x-request-id", b"%d" % rng.randrange(10**9))]
        request = tutils.treq(
            host=host,
            port=8080 if host == "127.0.0.1" else 443,
            scheme=b"http" if host == "127.0.0.1" else b"https",
            method=method.encode(),
            path=path.encode(),
            headers=http.Headers(headers + extra),
            content=body,
        )
        flow = tflow.tflow(req=request)
        upgrade = bool(extra) and extra[0][0] == b"upgrade"
        response = (
            tutils.tresp(status_code=101, headers=http.Headers(extra), content=b"")
            if upgrade
            else tutils.tresp(content=json.dumps({"ok": True}).encode())
        )
        out.append((flow, response, None))
    failed = tflow.tflow(req=tutils.treq(host="localhost", port=8000, scheme=b"http"))
    out.append((failed, None, None))
    return out


def every_concern(addon: FailCore, hook: str) -> Callable[..., Any]:
    """`hook` on every concern that has it, in order, as mitmproxy calls separate addons."""
    handlers = [getattr(c, hook) for c in addon.concerns if callable(getattr(c, hook, None))]

    async def every(*args: Any) -> None:
        for handler in handlers:
            result = handler(*args)
            if result is not None and inspect.isawaitable(result):
                await result

    return every


@contextmanager
def proxy(tmp: Path, policy: str | None, *, reference: bool) -> Iterator[FailCore]:
    """The whole addon, configured as mitmdump would, its tape in tmp/tape; the same salt (DLP
    fingerprints) and policy path whatever `tmp`."""
    session = Session()
    session.salt = b"hookdispatch-test-salt-32-bytes!"
    addon = FailCore(session)
    if reference:
        for hook in EXCHANGE_HOOKS:
            setattr(addon, hook, every_concern(addon, hook))
    options: dict[str, Any] = {"confdir": str(tmp / "confdir"), "failcore_tape": str(tmp / "tape")}
    if policy is not None and "\n" in policy:
        path = tmp.parent / "policy.yaml"
        path.write_text(policy)
        options["failcore_policy"] = str(path)
    elif policy is not None:
        options["failcore_policy"] = policy
    with taddons.context() as tctx:
        addon.load(Loader(tctx.master))
        tctx.master.addons.add(addon)
        tctx.options.update(**options)
        tctx.master.addons.invoke_addon_sync(addon, hooks.ConfigureHook(set(tctx.options.keys())))
        yield addon


async def call(addon: FailCore, hook: str, flow: http.HTTPFlow | None) -> None:
    handler = getattr(addon, hook, None)
    if handler is not None and (result := handler() if flow is None else handler(flow)) is not None:
        await result


async def exchange(
    addon: FailCore, flow: http.HTTPFlow, response: http.Response | None, chunks: list[bytes] | None
) -> dict[str, Any]:
    """The flow through the hooks as mitmproxy calls them; what failcore decided and left on it."""
    await call(addon, "requestheaders", flow)
    if flow.response is None:
        await call(addon, "request", flow)
    state = addon.session.flows.get(flow.id)
    seen: dict[str, Any] = {
        "decision": repr(state.decision) if state else None,
        "blocked": state.blocked if state else None,
        "warnings": list(state.warnings) if state else None,
        "request_stream": repr(flow.request.stream) if not callable(flow.request.stream) else "callable",
    }
    if flow.response is None and response is None:
        flow.error = tflow.terr()
        await call(addon, "error", flow)
    else:
        if flow.response is None:
            flow.response = response
            await call(addon, "responseheaders", flow)
            stream = flow.response.stream
            if callable(stream) and chunks is not None:
                for chunk in chunks:
                    stream(chunk)
                stream(b"")
                flow.response.content = None
        await call(addon, "response", flow)
        seen["response"] = (
            flow.response.status_code,
            list(flow.response.headers.fields),
            flow.response.raw_content,
        )
    seen |= {
        "comment": flow.comment,
        "marked": flow.marked,
        "metadata": sorted(flow.metadata),
        "killed": not flow.killable,
    }
    return seen


def without_volatile(item: Any) -> Any:
    if isinstance(item, dict):
        return {
            k: [size for _, size in v] if k == "chunks" else without_volatile(v)
            for k, v in item.items()
            if k not in VOLATILE
        }
    if isinstance(item, list):
        return [without_volatile(v) for v in item]
    return item


def run_all(tmp: Path, policy: str | None, *, reference: bool) -> tuple[list[dict[str, Any]], list[Any]]:
    """Every flow through the addon; its tape (less what differs from run to run) and what it left on
    each flow."""
    flows = [exchange_flow(e) for e in recorded_exchanges()] + plain_flows()

    async def go() -> list[Any]:
        with proxy(tmp, policy, reference=reference) as addon:
            await call(addon, "running", None)
            if addon.session.dlp is not None:
                wait_until_built(addon.session.dlp.engine)
            seen = []
            for i, (flow, response, chunks) in enumerate(flows):
                flow.id = f"flow-{i}"  # the same ids in both runs
                seen.append(await exchange(addon, flow, response, chunks))
            await call(addon, "done", None)
            return seen

    seen = asyncio.run(go())
    return [without_volatile(e) for e in read_tape(tmp / "tape")], seen


@pytest.mark.parametrize("name", list(POLICIES))
def test_the_pruned_dispatch_records_and_decides_what_every_concern_would(name: str, tmp_path: Path) -> None:
    (tmp_path / "every").mkdir()
    (tmp_path / "pruned").mkdir()
    every_events, every_flows = run_all(tmp_path / "every", POLICIES[name], reference=True)
    events, flows = run_all(tmp_path / "pruned", POLICIES[name], reference=False)
    assert len(flows) > 20
    assert flows == every_flows
    assert events == every_events


def counting(calls: dict[str, int], key: str, hook: Callable[..., Any]) -> Callable[..., Any]:
    def counted(self: object, *args: Any) -> Any:
        calls[key] = calls.get(key, 0) + 1
        return hook(self, *args)

    return counted


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often each hook LEFT_OUT names was called (counted on the classes, before an addon is built)."""
    counts: dict[str, int] = {}
    for cls, hook in LEFT_OUT:
        key = f"{cls.__name__}.{hook}"
        monkeypatch.setattr(cls, hook, counting(counts, key, getattr(cls, hook)))
    return counts


def test_under_the_default_policy_an_exchange_calls_no_concern_that_can_do_nothing(
    calls: dict[str, int], tmp_path: Path
) -> None:
    (tmp_path / "every").mkdir()
    (tmp_path / "pruned").mkdir()
    run_all(tmp_path / "every", None, reference=True)
    assert set(calls) == {f"{cls.__name__}.{hook}" for cls, hook in LEFT_OUT}  # each one counted
    calls.clear()
    run_all(tmp_path / "pruned", None, reference=False)
    assert calls == {}


def test_a_policy_reload_brings_back_the_concerns_it_needs(calls: dict[str, int], tmp_path: Path) -> None:
    """Observe, no budget: the budget guard is left out; the policy file edited to a budget of 1 token
    and reloaded by the gate's own reload path: the guard charges the first call and refuses the next."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nmode: observe\ndefault: ALLOW\n")
    (tmp_path / "run").mkdir()
    llm = [e for e in recorded_exchanges() if e["host"] == "api.openai.com:443" and e["status"] == 200]

    async def go() -> list[int | None]:
        with proxy(tmp_path / "run", str(policy), reference=False) as addon:
            await call(addon, "running", None)
            statuses = []
            flow, response, chunks = exchange_flow(llm[0])
            statuses.append((await exchange(addon, flow, response, chunks))["response"][0])
            assert not any(key.startswith("BudgetGuard") for key in calls)
            policy.write_text(token_budget(1))
            assert await addon.gate.reload_if_changed()
            for e in llm[:2]:
                flow, response, chunks = exchange_flow(e)
                statuses.append((await exchange(addon, flow, response, chunks))["response"][0])
            await call(addon, "done", None)
            return statuses

    assert asyncio.run(go()) == [200, 200, 429]
    assert calls["BudgetGuard.request"] == 2 and calls["BudgetGuard.response"] == 2


class Failing:
    """A concern whose hooks fail each its own way: raising, handing back an awaitable that raises, an
    `async def` that raises; and one unguarded hook."""

    def __init__(self, session: Session) -> None:
        self.session = session

    @guarded("failing.request")
    def request(self, flow: http.HTTPFlow) -> None:
        raise RuntimeError(f"sync on {flow.request.host}")

    @guarded("failing.response")
    def response(self, flow: http.HTTPFlow) -> Any:
        return self._later()

    async def _later(self) -> None:
        await asyncio.sleep(0)
        raise ValueError("in the awaitable")

    @guarded("failing.error")
    async def error(self, flow: http.HTTPFlow) -> None:
        raise KeyError("async")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        raise RuntimeError("unguarded")


class Witness:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def request(self, flow: http.HTTPFlow) -> None:
        self.seen.append("request")

    def response(self, flow: http.HTTPFlow) -> None:
        self.seen.append("response")

    def error(self, flow: http.HTTPFlow) -> None:
        self.seen.append("error")


def failures(session: Session) -> list[Any]:
    """What was recorded of each failure (less the traceback and the times), what the flow was left."""
    return [
        (e["flow"], e["error"], e["detail"]["where"], e["detail"]["fail_open"])
        for e in session.pending
        if isinstance(e, dict) and e.get("kind") == "internal_error"
    ]


@pytest.mark.parametrize("fail_open", [True, False])
def test_the_dispatch_guards_a_hook_as_its_guarded_wrapper_does(fail_open: bool) -> None:
    """Each hook through the dispatch (unwrapped) and through `guarded`'s wrapper alone: the same
    internal_error recorded, the same refusal under `fail_open: false`; the next concern still runs."""
    policy = parse_policy(f"version: 1\nmode: observe\nfail_open: {str(fail_open).lower()}\n", "p.yaml")
    outcomes = []
    for through_dispatch in (False, True):
        session = Session(policy=policy)
        failing, witness = Failing(session), Witness()
        left = []
        for hook in ("request", "response", "error"):
            flow = tflow.tflow(resp=hook == "response", err=hook == "error")
            flow.id = f"flow-{hook}"
            if through_dispatch:
                handlers = [getattr(failing, hook), getattr(witness, hook)]
                result = pruned_dispatcher(session, hook, [failing, witness], handlers)(flow)
                if result is not None:
                    asyncio.run(result)
            else:  # as mitmproxy calls two addons
                result = getattr(failing, hook)(flow)
                if result is not None:
                    asyncio.run(result)
                witness.seen.append(hook)
            response = flow.response
            left.append(
                (response.status_code, response.headers.get("X-FailCore-Decision")) if response else None
            )
        outcomes.append((failures(session), left, witness.seen, session.internal_errors))
    assert outcomes[0][0] and len(outcomes[0][0]) == 3
    assert outcomes[1] == outcomes[0]


def test_an_unguarded_hook_that_raises_is_not_swallowed_by_the_dispatch() -> None:
    session = Session()
    failing = Failing(session)
    dispatch = pruned_dispatcher(session, "requestheaders", [failing], [failing.requestheaders])
    with pytest.raises(RuntimeError, match="unguarded"):
        dispatch(tflow.tflow())
    assert session.internal_errors == 0
