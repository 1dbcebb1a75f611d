"""`fail_open: false` for hooks that decide something other than an HTTP request: a DNS question and a
server connection are refused when the check of them fails; fail-open lets them be."""

from __future__ import annotations

from mitmproxy.net.dns import response_codes
from mitmproxy.proxy import server_hooks
from mitmproxy.test import tflow

from failcore.policy.load import parse_policy
from failcore.proxy.session import Session


def session(fail_open: bool) -> Session:
    text = f"version: 1\nmode: enforce\nfail_open: {'true' if fail_open else 'false'}\n"
    return Session(policy=parse_policy(text, "policy.yaml"))


def test_a_dns_question_whose_check_failed_is_answered_servfail_under_fail_closed() -> None:
    flow = tflow.tdnsflow()
    session(fail_open=False).internal_error(flow, "hostdlp.dns_request", RuntimeError("broke"), flow)
    assert flow.response is not None and flow.response.response_code == response_codes.SERVFAIL
    opened = tflow.tdnsflow()
    session(fail_open=True).internal_error(opened, "hostdlp.dns_request", RuntimeError("broke"), opened)
    assert opened.response is None


def test_a_server_connection_whose_check_failed_is_not_opened_under_fail_closed() -> None:
    data = server_hooks.ServerConnectionHookData(server=tflow.tserver_conn(), client=tflow.tclient_conn())
    data.server.error = None
    session(fail_open=False).internal_error(None, "hostdlp.server_connect", RuntimeError("broke"), data)
    assert data.server.error and "fail_open: false" in data.server.error
    data.server.error = None
    session(fail_open=True).internal_error(None, "hostdlp.server_connect", RuntimeError("broke"), data)
    assert data.server.error is None
