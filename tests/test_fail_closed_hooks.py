"""`fail_open: false` (failcore.proxy.failclosed): when a hook fails, what it was deciding is refused;
fail-open (the default) lets it be. Each hook through `guarded`, as mitmproxy calls it."""

from __future__ import annotations

from mitmproxy import http, tcp, websocket
from mitmproxy.net.dns import response_codes
from mitmproxy.proxy import server_hooks
from mitmproxy.test import tflow

from failcore.policy.load import parse_policy
from failcore.proxy.guard import guarded
from failcore.proxy.session import Session


class Broken:
    """A concern every hook of which raises."""

    def __init__(self, fail_open: bool) -> None:
        text = f"version: 1\nmode: enforce\nfail_open: {'true' if fail_open else 'false'}\n"
        self.session = Session(policy=parse_policy(text, "policy.yaml"))

    def _raise(self) -> None:
        raise RuntimeError("broke")

    @guarded("broken.dns_request")
    def dns_request(self, flow: object) -> None:
        self._raise()

    @guarded("broken.server_connect")
    def server_connect(self, data: object) -> None:
        self._raise()

    @guarded("broken.websocket_message")
    def websocket_message(self, flow: object) -> None:
        self._raise()

    @guarded("broken.websocket_end")
    def websocket_end(self, flow: object) -> None:
        self._raise()

    @guarded("broken.tcp_message")
    def tcp_message(self, flow: object) -> None:
        self._raise()

    @guarded("broken.request")
    def request(self, flow: object) -> None:
        self._raise()

    @guarded("broken.response")
    def response(self, flow: object) -> None:
        self._raise()

    @guarded("broken.error")
    def error(self, flow: object) -> None:
        self._raise()

    @guarded("broken.tcp_start")
    def tcp_start(self, flow: object) -> None:
        self._raise()

    @guarded("broken.server_connected")
    def server_connected(self, data: object) -> None:
        self._raise()


def errors(concern: Broken) -> list[dict]:
    return [e for e in concern.session.pending if isinstance(e, dict) and e["kind"] == "internal_error"]


def test_a_dns_question_whose_check_failed_is_answered_servfail_under_fail_closed() -> None:
    flow = tflow.tdnsflow()
    Broken(fail_open=False).dns_request(flow)
    assert flow.response is not None and flow.response.response_code == response_codes.SERVFAIL
    opened = tflow.tdnsflow()
    concern = Broken(fail_open=True)
    concern.dns_request(opened)
    assert opened.response is None and len(errors(concern)) == 1


def test_a_server_connection_whose_check_failed_is_not_opened_under_fail_closed() -> None:
    data = server_hooks.ServerConnectionHookData(server=tflow.tserver_conn(), client=tflow.tclient_conn())
    data.server.error = None
    Broken(fail_open=False).server_connect(data)
    assert data.server.error and "fail_open: false" in data.server.error
    data.server.error = None
    Broken(fail_open=True).server_connect(data)
    assert data.server.error is None


def test_a_websocket_message_whose_check_failed_is_dropped_and_the_upgrade_kept() -> None:
    flow = tflow.twebsocketflow()
    response = flow.response
    flow.websocket.messages.append(websocket.WebSocketMessage(2, True, b"secret?"))
    Broken(fail_open=False).websocket_message(flow)
    assert flow.websocket.messages[-1].dropped
    assert flow.response is response, "the recorded 101 is not replaced"
    # A failure after the messages (websocket_end) does not mark one already sent as dropped.
    sent = tflow.twebsocketflow()
    sent.websocket.messages.append(websocket.WebSocketMessage(2, True, b"gone"))
    Broken(fail_open=False).websocket_end(sent)
    assert not sent.websocket.messages[-1].dropped
    passed = tflow.twebsocketflow()
    passed.websocket.messages.append(websocket.WebSocketMessage(2, True, b"x"))
    Broken(fail_open=True).websocket_message(passed)
    assert not passed.websocket.messages[-1].dropped


def test_a_tcp_message_whose_check_failed_is_not_relayed() -> None:
    flow = tflow.ttcpflow()
    flow.messages.append(tcp.TCPMessage(True, b"payload"))
    Broken(fail_open=False).tcp_message(flow)
    assert flow.messages[-1].content == b""
    kept = tflow.ttcpflow()
    kept.messages.append(tcp.TCPMessage(True, b"payload"))
    Broken(fail_open=True).tcp_message(kept)
    assert kept.messages[-1].content == b"payload"


def test_an_http_request_whose_check_failed_is_answered_502_fail_closed() -> None:
    flow = tflow.tflow()
    Broken(fail_open=False).request(flow)
    assert isinstance(flow.response, http.Response) and flow.response.status_code == 502
    assert flow.response.headers["X-FailCore-Decision"] == "FAIL_CLOSED"
    passed = tflow.tflow()
    Broken(fail_open=True).request(passed)
    assert passed.response is None


def test_a_whole_response_whose_check_failed_is_withheld_and_a_streamed_one_left_as_sent() -> None:
    whole = tflow.tflow(resp=True)
    Broken(fail_open=False).response(whole)
    assert whole.response.status_code == 502
    assert b"response was withheld" in whole.response.content
    streamed = tflow.tflow(resp=True)
    sent = streamed.response
    sent.stream = True
    Broken(fail_open=False).response(streamed)
    assert streamed.response is sent, "already sent: the tape keeps what the client got"


def test_a_websocket_upgrade_whose_response_check_failed_is_refused() -> None:
    flow = tflow.twebsocketflow()
    flow.live = True
    Broken(fail_open=False).response(flow)
    assert flow.response.status_code == 502


def test_a_failure_that_only_reports_refuses_nothing() -> None:
    flow = tflow.tflow(resp=True, err=True)
    response = flow.response
    Broken(fail_open=False).error(flow)
    assert flow.response is response


def test_a_tcp_stream_whose_check_failed_relays_nothing_more() -> None:
    from failcore.proxy.failclosed import REFUSED

    flow = tflow.ttcpflow()
    Broken(fail_open=False).tcp_start(flow)
    assert flow.metadata.get(REFUSED) is True
    kept = tflow.ttcpflow()
    Broken(fail_open=True).tcp_start(kept)
    assert REFUSED not in kept.metadata


def test_a_connected_server_whose_check_failed_is_dropped() -> None:
    data = server_hooks.ServerConnectionHookData(server=tflow.tserver_conn(), client=tflow.tclient_conn())
    data.server.error = None
    Broken(fail_open=False).server_connected(data)
    assert data.server.error and "dropped" in data.server.error
