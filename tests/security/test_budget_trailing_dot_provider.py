"""Held attack: `api.openai.com.` (the fully-qualified spelling, which resolves to the same servers)
made the provider `openai_compatible`, so a budget scoped to `provider: openai` did not apply."""

from __future__ import annotations

from tests.helpers import network_events, proxied_client, read_tape
from tests.llm_replay import RedirectToReplay
from tests.security.budget_helpers import CHAT, completion, token_budget
from tests.security.upstream import LoggingUpstream


def test_trailing_dot_host_is_still_openai(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path
) -> None:
    plain_logging_upstream.respond_with = completion(2000)
    proxy = start_proxy(policy_file(token_budget(3000, scope="scope: {provider: openai}")))
    # Stands in for DNS: the connection opens to the logging upstream once failcore has decided.
    proxy.call(lambda: proxy.proxy.master.addons.add(RedirectToReplay(plain_logging_upstream.port)))
    with proxied_client(proxy) as client:
        statuses = [
            client.post(f"http://{host}/v1/chat/completions", json=CHAT).status_code
            for host in ("api.openai.com.", "API.OpenAI.com.", "api.openai.com.")
        ]
    proxy.flush()
    assert statuses == [200, 200, 429]
    assert plain_logging_upstream.received_bytes().count(b"POST /v1/chat/completions") == 2

    events = network_events(read_tape(tmp_path / "tape"))
    assert [e["llm"]["provider"] for e in events[:2]] == ["openai", "openai"]
    assert (events[2]["decision"], events[2]["rule"]) == ("BLOCK", "budget:tokens")
