"""A failure inside the replay's own stream callable (failcore.replay.serve.Rechunker, which re-cuts a
replayed response at its recorded chunk boundaries) while the replayed body streams to the client.

The parts inside it (the stream tap, the cut guards) reported their failures, but a raise in the
Rechunker itself went to mitmproxy: unrecorded, and the client's stream broken whatever `fail_open`
said. Now it is handled like any stream callable's failure: recorded (an `internal_error` event and the
exchange's own); fail-open sends the bytes on (without the recorded boundaries); `fail_open: false`
cuts the stream. The recorded provider is never contacted either way."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest

from failcore.demo.server import StandIn
from failcore.replay.serve import Rechunker
from tests.helpers import network_events, read_tape
from tests.replay_agents import replay_sets, run_id
from tests.security.helpers import stream_through


class BrokenSizes(deque):  # type: ignore[type-arg]
    """The recorded chunk sizes, raising whenever one is taken."""

    def popleft(self) -> int:
        raise RuntimeError("injected rechunker failure")


@pytest.mark.parametrize("fail_open", [True, False])
def test_a_failing_rechunker_is_recorded_and_follows_fail_open(
    start_proxy,
    policy_file,
    upstream: StandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fail_open: bool,
) -> None:
    tape = tmp_path / "tape"
    url = upstream.url + "/sse?n=3"
    recorder = start_proxy(tape=tape)
    recorded, failure = stream_through(recorder, url)
    recorder.stop()
    assert failure is None and recorded.count(b"data:") >= 3
    source = run_id(recorder)

    original_init = Rechunker.__init__

    def broken_init(self: Rechunker, *args: object, **kw: object) -> None:
        original_init(self, *args, **kw)  # type: ignore[arg-type]
        self.sizes = BrokenSizes(self.sizes)

    monkeypatch.setattr(Rechunker, "__init__", broken_init)
    policy = policy_file(f"version: 1\nmode: enforce\nfail_open: {str(fail_open).lower()}\n")
    before = upstream.request_count()
    replayer = start_proxy(policy, tape=tape, sets=replay_sets(tape, source))
    got, failure = stream_through(replayer, url)
    replayer.stop()
    assert upstream.request_count() == before, "a replay must not contact the upstream"

    events = [e for e in read_tape(tape) if e["run"] == run_id(replayer)]
    errors = [e for e in events if e["kind"] == "internal_error"]
    assert len(errors) == 1, errors
    assert errors[0]["detail"]["where"] == "response stream: Rechunker"
    assert "injected rechunker failure" in errors[0]["error"]
    (event,) = network_events(events)
    assert event["replay"]["mode"] == "replayed"
    if fail_open:
        assert (got, failure) == (recorded, None), "fail-open: the replayed body reaches the client whole"
        assert event["outcome"] == "ok" and event.get("cut") is None
        assert "Rechunker: RuntimeError: injected rechunker failure" in event["error"]
    else:
        assert failure is not None and got != recorded, "fail_open: false must cut the stream"
        assert event["cut"]["reason"] == "internal_error"
