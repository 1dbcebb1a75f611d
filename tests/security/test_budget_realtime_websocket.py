"""Held attack: an OpenAI Realtime-shaped WebSocket session (`/v1/realtime`) was admitted once and never
metered: every `response.create` sent after the token budget was spent still reached the upstream.

A realtime session a token budget applies to is now metered message by message: each `response.done`
the server sends is charged its usage, and once a limit is reached the client's messages are dropped
(nothing reaches the upstream). A session whose cost a budget limits cannot be metered: refused at the
upgrade. Another WebSocket is no LLM session and is still admitted.

The logging upstream echoes each message back: a `response.done` the client sends returns from the
server, as the Realtime API's answer (its shape from OpenAI's API reference)."""

from __future__ import annotations

from tests.helpers import network_events, proxied_client, read_tape
from tests.security.budget_helpers import CHAT, completion, token_budget
from tests.security.helpers import LAST, ws_exchange
from tests.security.realtime_helpers import CREATE, REALTIME, Session, done, upgrade_answer
from tests.security.upstream import LoggingUpstream


def test_response_usage_is_charged_and_messages_past_the_budget_dropped(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    plain_logging_upstream.respond_with = completion(20)
    proxy = start_proxy(policy_file(token_budget(50)))
    session = Session(proxy.port, plain_logging_upstream, REALTIME)
    try:
        assert session.echo(CREATE)[-1] == CREATE
        session.echo(done(40))
        session.echo(done(40))  # 80 tokens: the 50-token budget is spent
        for _ in range(3):
            session.send(CREATE)
        session.send(LAST)
    finally:
        session.close()
    with proxied_client(proxy) as client:
        chat = client.post(f"{plain_logging_upstream.url}/v1/chat/completions", json=CHAT)
    proxy.flush()
    assert chat.status_code == 429  # the realtime session's usage counts against the run's budget
    assert plain_logging_upstream.ws_messages == [CREATE, done(40), done(40)]

    events = read_tape(tmp_path / "tape")
    dropped = [e for e in events if e["kind"] == "websocket" and e["outcome"] == "BLOCKED"]
    assert len(dropped) == 4  # three response.create and the last message
    assert {e["rule"] for e in dropped} == {"budget:tokens"}
    (refused,) = [e for e in network_events(events) if e["path"] == "/v1/chat/completions"]
    assert (refused["decision"], refused["rule"]) == ("BLOCK", "budget:tokens")


def test_messages_after_http_calls_spent_the_budget_are_dropped(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """The reviewer's sequence: the session opens, chat calls spend the budget, then `response.create`."""
    plain_logging_upstream.respond_with = completion(30)
    proxy = start_proxy(policy_file(token_budget(50)))
    session = Session(proxy.port, plain_logging_upstream, REALTIME)
    try:
        with proxied_client(proxy) as client:
            url = f"{plain_logging_upstream.url}/v1/chat/completions"
            statuses = [client.post(url, json=CHAT).status_code for _ in range(3)]
        for _ in range(5):
            session.send(CREATE + " " * 5000)
        session.send(LAST)
        session.sock.settimeout(2)
        session._wait(lambda e: False)  # nothing comes back: until the timeout
    except TimeoutError:
        pass
    finally:
        session.close()
    proxy.flush()
    assert statuses == [200, 200, 429]
    assert plain_logging_upstream.ws_messages == []
    dropped = [e for e in read_tape(tmp_path / "tape") if e["kind"] == "websocket"]
    assert len(dropped) == 6 and {(e["outcome"], e["rule"]) for e in dropped} == {
        ("BLOCKED", "budget:tokens")
    }


def test_a_realtime_session_under_a_cost_budget_is_refused(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    policy = token_budget(50).replace("limits: {total_tokens: 50}", "limits: {cost_usd: 1}")
    proxy = start_proxy(policy_file(policy))
    answer = upgrade_answer(proxy.port, plain_logging_upstream, REALTIME)
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert b"X-FailCore-Rule: budget:tokens" in answer
    assert b"/v1/realtime" not in plain_logging_upstream.received_bytes()

    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("BLOCK", "budget:tokens")
    assert any("cannot be metered" in w["message"] for w in event["warnings"])


def test_another_websocket_is_still_admitted(
    start_proxy, policy_file, logging_upstream: LoggingUpstream
) -> None:
    proxy = start_proxy(policy_file(token_budget(50)), upstream_ca=logging_upstream.ca_path)
    assert ws_exchange(proxy, logging_upstream, ["hello"]) == ["hello", LAST]
