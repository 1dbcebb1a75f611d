"""Attack: a realtime session the server opens under a path or a model failcore read otherwise.

The realtime sessions of a token budget are metered (failcore/proxy/realtime.py), but which upgrade
opens one was read from the path as written and the query's first `model`:

* `/v1%2Frealtime`: uvicorn (vLLM's, LiteLLM's servers) decodes `%2F` before Starlette routes, so
  this is the `/v1/realtime` endpoint; `/v1/realtime;x=1` is Tomcat's, Jetty's and Spring's. LLM call
  detection reads these readings of a path (path_aliases), the realtime one did not: never metered;
* `?model=other&model=gpt-4o-realtime-preview`: Starlette's `query_params["model"]` is the last one
  (werkzeug's `request.args` and Go's `Query().Get` the first: servers differ); failcore took the
  first, so a budget scoped to the model the session uses did not count it. Azure reads its
  `deployment`; failcore read `model` first when both were given. Several models: any model.

Each through the real proxy: once the budget is spent, nothing more of the session reaches the
upstream, and the tape holds the dropped messages."""

from __future__ import annotations

import pytest

from tests.helpers import network_events, read_tape
from tests.security.budget_helpers import token_budget
from tests.security.helpers import LAST
from tests.security.realtime_helpers import CREATE, Session, done, upgrade_answer
from tests.security.upstream import LoggingUpstream

SCOPED = token_budget(50, 'scope: {model: "gpt-4o-realtime*"}')


def _spend_then_ask(proxy_port: int, upstream: LoggingUpstream, target: str) -> None:
    session = Session(proxy_port, upstream, target)
    try:
        session.echo(done(40))
        session.echo(done(40))  # 80 tokens: the 50-token budget is spent
        for _ in range(3):
            session.send(CREATE)
        session.send(LAST)
        session.sock.settimeout(2)
        session._wait(lambda e: False)  # nothing more comes back: until the timeout
    except TimeoutError:
        pass
    finally:
        session.close()


@pytest.mark.parametrize(
    ("target", "policy"),
    [
        ("/v1%2Frealtime?model=gpt-4o-realtime-preview", token_budget(50)),
        ("/v1/realtime;x=1?model=gpt-4o-realtime-preview", token_budget(50)),
        ("/v1/realtime?model=gpt-4o-mini-transcribe&model=gpt-4o-realtime-preview", SCOPED),
        ("/openai/realtime?model=gpt-4o-mini&deployment=gpt-4o-realtime-preview", SCOPED),
    ],
    ids=["percent-2f", "path-parameter", "second-model", "model-and-deployment"],
)
def test_a_session_past_the_budget_is_cut_whatever_its_spelling(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path, target: str, policy: str
) -> None:
    proxy = start_proxy(policy_file(policy))
    _spend_then_ask(proxy.port, plain_logging_upstream, target)
    proxy.flush()
    assert plain_logging_upstream.ws_messages == [done(40), done(40)], "no response.create after the budget"
    events = [e for e in read_tape(tmp_path / "tape") if e["kind"] == "websocket"]
    dropped = [e for e in events if e["outcome"] == "BLOCKED"]
    assert len(dropped) == 4  # three response.create and the last message
    assert {e["rule"] for e in dropped} == {"budget:tokens"}


def test_a_gemini_live_session_with_an_ephemeral_token_is_refused(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    """Gemini Live, whose usage failcore does not read, is refused under a token budget ("cannot meter");
    with an ephemeral token its endpoint is `…GenerativeService.BidiGenerateContentConstrained` (Google's
    ephemeral-tokens page), which was not read as Gemini Live and went through unmetered."""
    proxy = start_proxy(policy_file(token_budget(50)))
    path = "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained"
    answer = upgrade_answer(proxy.port, plain_logging_upstream, f"{path}?access_token=t")
    proxy.flush()
    assert b"BidiGenerateContent" not in plain_logging_upstream.received_bytes()
    assert answer.startswith(b"HTTP/1.1 403"), answer
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"]) == ("BLOCK", "budget:tokens")
