"""Attack: a `requests` budget, the number of LLM calls, did not count what a realtime session asks for.

Every `response.create` a client sends on a realtime WebSocket (`/v1/realtime`) is one generation of
the model, as a Chat Completions call is; with server VAD (`turn_detection`) the server starts one by
itself when the user stops talking (`response.created` with no `response.create`). failcore metered a
session only for tokens and wall time: under `requests: 3`, the upgrade counted one request and then
any number of `response.create` reached the upstream (three HTTP calls would have been refused).

Now a `response.create` is counted when it is admitted (refused, dropped, once the limit is reached),
and a response the server started by itself when its `response.created` arrives (client messages are
then dropped). Through the real proxy; the logging upstream echoes each message back, so a
`response.created` the client sends returns from the server, as one the server started would."""

from __future__ import annotations

import json

import pytest

from tests.helpers import read_tape
from tests.security.budget_helpers import token_budget
from tests.security.helpers import LAST
from tests.security.realtime_helpers import CREATE, REALTIME, Session
from tests.security.upstream import LoggingUpstream

REQUESTS = token_budget(3, metric="requests")
CREATED = json.dumps({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}})


def _dropped(tape) -> list[dict]:  # type: ignore[no-untyped-def]
    events = [e for e in read_tape(tape) if e["kind"] == "websocket" and e["outcome"] == "BLOCKED"]
    assert {e["rule"] for e in events} == {"budget:tokens"}  # (the budget's id is `tokens`)
    return events


def _send_then_wait(session: Session, messages: list[str]) -> None:
    try:
        for message in messages:
            session.send(message)
        session.sock.settimeout(2)
        session._wait(lambda e: False)  # until the timeout: what the upstream echoes is read
    except TimeoutError:
        pass
    finally:
        session.close()


@pytest.mark.parametrize(
    "create", [CREATE, CREATE.replace("response.create", "response\\u002ecreate")], ids=["plain", "escaped"]
)
def test_each_response_create_counts_as_a_request(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path, create: str
) -> None:
    """(A `\\u` escape in its `type` is the same event to the server's JSON parser.)"""
    assert json.loads(create)["type"] == "response.create"
    proxy = start_proxy(policy_file(REQUESTS))
    session = Session(proxy.port, plain_logging_upstream, REALTIME)  # the upgrade: request 1
    _send_then_wait(session, [create] * 5 + [LAST])
    proxy.flush()
    assert plain_logging_upstream.ws_messages == [create, create], "requests 2 and 3, then none"
    assert len(_dropped(tmp_path / "tape")) == 4  # three response.create and the last message


def test_a_response_the_server_starts_counts_as_a_request(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    proxy = start_proxy(policy_file(REQUESTS))
    session = Session(proxy.port, plain_logging_upstream, REALTIME)
    try:
        session.echo(CREATED)  # requests 2 and 3: two responses the server started (server VAD)
        session.echo(CREATED)
    except BaseException:
        session.close()
        raise
    _send_then_wait(session, ['{"type": "input_audio_buffer.append", "audio": "AAAA"}', LAST])
    proxy.flush()
    assert plain_logging_upstream.ws_messages == [CREATED, CREATED], "nothing after the third request"
    assert len(_dropped(tmp_path / "tape")) == 2
