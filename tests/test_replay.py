"""Replay from a tape: real SDK agent loops recorded through the proxy, then replayed, resumed, forked."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from failcore.demo.server import StandIn
from failcore.proxy.session import BodyTap
from failcore.replay.canned import replay_headers
from failcore.replay.match import ReplayIndex, miss_body
from failcore.replay.overrides import load_override, parse_overrides
from failcore.replay.pointers import first_difference, format_pointer, parse_pointer
from failcore.replay.recording import RecordedExchange, canned_from_event, parse_replay_source
from failcore.replay.request import DEFAULT_IGNORED_POINTERS, RequestShape, normalize_body
from failcore.replay.savings import replay_savings
from failcore.replay.serve import Rechunker
from tests.helpers import ProxyThread, proxied_client, read_tape
from tests.replay_agents import (
    OpenAiAgent,
    replay_sets,
    run_anthropic_agent,
    run_id,
    run_network,
    write_sse_override,
)

IGNORE = tuple(parse_pointer(p) for p in DEFAULT_IGNORED_POINTERS)


def record(start_proxy, tape: Path, agent) -> tuple[str, Any]:  # type: ignore[no-untyped-def]
    proxy = start_proxy(tape=tape)
    result = agent(proxy)
    proxy.stop()
    return run_id(proxy), result


# ---------------------------------------------------------------- end to end


def test_openai_agent_replays_from_tape_without_upstream(start_proxy, upstream, tmp_path):
    tape = tmp_path / "tape"
    recorder = start_proxy(tape=tape)
    first = OpenAiAgent(recorder, upstream)
    recorded_output = first.run("weather in Paris", followup="and tomorrow?")
    recorder.stop()
    source = run_id(recorder)

    before = upstream.request_count()
    replayer = start_proxy(tape=tape, sets=replay_sets(tape, source))
    second = OpenAiAgent(replayer, upstream)
    replayed_output = second.run("weather in Paris", followup="and tomorrow?")
    replayer.stop()

    assert upstream.request_count() == before, "a replay must not contact the upstream"
    assert replayed_output == recorded_output
    assert recorded_output[-1] == "Echo: and tomorrow?"
    # The client received the same bytes in the same chunks.
    assert second.transport.responses == first.transport.responses
    assert all(len(chunks) > 3 for chunks in second.transport.responses)

    events = read_tape(tape)
    start = next(e for e in events if e["kind"] == "run_start" and e["run"] == run_id(replayer))
    assert start["detail"]["replay_of"]["run"] == source
    original, replayed = run_network(tape, source), run_network(tape, run_id(replayer))
    assert [e["replay"] for e in replayed] == [{"mode": "replayed", "source_seq": e["seq"]} for e in original]
    for a, b in zip(original, replayed, strict=True):
        assert a["response"]["body"]["sha256"] == b["response"]["body"]["sha256"]
        assert [size for _, size in a["stream"]["chunks"]] == [size for _, size in b["stream"]["chunks"]]
        assert (a["target"], a["path"], a["status"]) == (b["target"], b["path"], b["status"])
        assert b["request"]["body"]["text"] == a["request"]["body"]["text"]
        assert all(name.lower() != "x-failcore-replay-token" for name, _ in b["request"]["headers"])
    saved = replay_savings(replayed)
    assert (saved["calls"], saved["input_tokens"], saved["output_tokens"]) == (3, 300, 60)
    assert replay_savings(original)["calls"] == 0


def test_replay_needs_no_upstream_at_all(start_proxy, tmp_path):
    """The recorded provider is gone (its port closed): the replay still answers, since mitmproxy is
    switched to lazy connections and so never dials the upstream at CONNECT."""
    tape = tmp_path / "tape"
    with StandIn(workdir=tmp_path / "gone") as gone:
        recorder = start_proxy(tape=tape, upstream_ca=gone.ca_path)
        recorded = OpenAiAgent(recorder, gone).run("weather in Paris")
        recorder.stop()
    replayer = start_proxy(tape=tape, upstream_ca=gone.ca_path, sets=replay_sets(tape, run_id(recorder)))
    assert OpenAiAgent(replayer, gone).run("weather in Paris") == recorded
    replayer.stop()
    assert [e["replay"]["mode"] for e in run_network(tape, run_id(replayer))] == ["replayed"] * 2


def test_anthropic_agent_replays_byte_for_byte(start_proxy, upstream, tmp_path):
    tape = tmp_path / "tape"
    source, recorded_output = record(
        start_proxy, tape, lambda p: run_anthropic_agent(p, upstream, "weather?")
    )
    assert recorded_output[-1] == "Tool said: sunny, 21 degrees"

    before = upstream.request_count()
    replayer = start_proxy(tape=tape, sets=replay_sets(tape, source))
    # metadata.user_id differs on every run: ignored by default when matching.
    assert run_anthropic_agent(replayer, upstream, "weather?") == recorded_output
    replayer.stop()
    assert upstream.request_count() == before

    original, replayed = run_network(tape, source), run_network(tape, run_id(replayer))
    assert [e["replay"]["mode"] for e in replayed] == ["replayed", "replayed"]
    for a, b in zip(original, replayed, strict=True):
        assert a["response"]["body"]["text"] == b["response"]["body"]["text"]
        assert [s for _, s in a["stream"]["chunks"]] == [s for _, s in b["stream"]["chunks"]]
        assert b["stream"]["chunk_count"] > 5


def test_resume_replays_the_unchanged_prefix_and_goes_live_after(start_proxy, upstream, tmp_path):
    tape = tmp_path / "tape"
    source, _ = record(start_proxy, tape, lambda p: OpenAiAgent(p, upstream).run("q1", followup="first"))

    before = upstream.request_count()
    replayer = start_proxy(tape=tape, sets=replay_sets(tape, source, "live"))
    output = OpenAiAgent(replayer, upstream).run("q1", followup="changed at step 3")
    replayer.stop()

    assert output[-1] == "Echo: changed at step 3"
    assert upstream.request_count() == before + 1
    replayed = run_network(tape, run_id(replayer))
    assert [e["replay"]["mode"] for e in replayed] == ["replayed", "replayed", "live"]
    assert replayed[2]["replay"]["reason"] == "no recorded request matches"
    assert replayed[2]["status"] == 200


def test_on_miss_fail_names_the_closest_request_and_the_pointer(start_proxy, upstream, tmp_path):
    tape = tmp_path / "tape"
    source, _ = record(start_proxy, tape, lambda p: OpenAiAgent(p, upstream).run("q1", followup="first"))
    original = run_network(tape, source)

    before = upstream.request_count()
    replayer = start_proxy(tape=tape, sets=replay_sets(tape, source, "fail"))
    with pytest.raises(openai.APIStatusError) as caught:
        OpenAiAgent(replayer, upstream).run("q1", followup="second")
    replayer.stop()

    assert upstream.request_count() == before
    assert caught.value.status_code == 599
    error = caught.value.response.json()["error"]
    assert error["type"] == "failcore_replay_miss"
    assert error["closest"] == {"seq": original[2]["seq"], "summary": "POST /v1/chat/completions"}
    assert error["first_difference"] == {
        "where": "body",
        "pointer": "/messages/4/content",
        "recorded": "first",
        "live": "second",
    }
    miss = run_network(tape, run_id(replayer))[-1]
    assert miss["replay"]["mode"] == "miss" and miss["replay"]["source_seq"] == original[2]["seq"]
    assert miss["status"] == 599


def test_override_forks_the_run_at_step_two(start_proxy, upstream, tmp_path):
    tape = tmp_path / "tape"
    source, recorded_output = record(start_proxy, tape, lambda p: OpenAiAgent(p, upstream).run("q1"))
    override = write_sse_override(tmp_path / "fork.yaml", "Forked answer")
    before = upstream.request_count()
    replayer = start_proxy(
        tape=tape, sets=replay_sets(tape, source, "fail", f"failcore_replay_override=2={override}")
    )
    agent = OpenAiAgent(replayer, upstream)
    output = agent.run("q1")
    replayer.stop()

    assert upstream.request_count() == before
    assert output[0] == recorded_output[0]
    assert recorded_output[1] != "Forked answer" and output[1] == "Forked answer"
    assert len(agent.transport.responses[1]) == 2, "one chunk per override SSE event"
    modes = [e["replay"] for e in run_network(tape, run_id(replayer))]
    assert modes[0]["mode"] == "replayed"
    assert modes[1]["mode"] == "override" and modes[1]["override"] == str(override)


def test_override_counts_only_requests_the_recording_has(start_proxy, upstream, tmp_path):
    """A request the recording never had (here a health check, answered live) must not shift the
    step `--override 2` forks."""
    tape = tmp_path / "tape"
    source, recorded_output = record(start_proxy, tape, lambda p: OpenAiAgent(p, upstream).run("q1"))
    override = write_sse_override(tmp_path / "fork.yaml", "Forked answer")
    replayer = start_proxy(
        tape=tape, sets=replay_sets(tape, source, "live", f"failcore_replay_override=2={override}")
    )
    with proxied_client(replayer) as client:
        assert client.get(upstream.url + "/json").status_code == 200  # not in the recording: live
    output = OpenAiAgent(replayer, upstream).run("q1")
    replayer.stop()
    assert output[0] == recorded_output[0], "the agent's first call is replayed, not forked"
    assert output[1] == "Forked answer"
    modes = [e["replay"]["mode"] for e in run_network(tape, run_id(replayer))]
    assert modes[:3] == ["live", "replayed", "override"]


def test_a_second_override_forks_the_already_forked_run(start_proxy, upstream, tmp_path):
    """After the fork at step 2 the follow-up request no longer matches the recording; it is still
    step 3, so a second override answers it (and --on-miss fail is not consulted)."""
    tape = tmp_path / "tape"
    source, recorded = record(start_proxy, tape, lambda p: OpenAiAgent(p, upstream).run("q1", "more?"))
    files = [
        f"failcore_replay_override={n}={write_sse_override(tmp_path / f'fork{n}.yaml', text)}"
        for n, text in ((2, "First fork"), (3, "Second fork"))
    ]
    replayer = start_proxy(tape=tape, sets=replay_sets(tape, source, "fail", *files))
    output = OpenAiAgent(replayer, upstream).run("q1", "more?")
    replayer.stop()
    assert output == [recorded[0], "First fork", "Second fork"]
    modes = [e["replay"]["mode"] for e in run_network(tape, run_id(replayer))]
    assert modes == ["replayed", "override", "override"]


def test_calls_answered_from_the_tape_do_not_count_against_a_request_budget(
    start_proxy, policy_file, upstream, tmp_path
):
    tape = tmp_path / "tape"

    def three_calls(proxy: ProxyThread) -> list[int]:
        with proxied_client(proxy) as client:
            return [client.get(f"{upstream.url}/json?step={i}").status_code for i in range(3)]

    source, recorded = record(start_proxy, tape, three_calls)
    policy = policy_file(
        "mode: enforce\nbudgets:\n  - id: two-calls\n    window: run\n    limits: {requests: 2}\n"
    )
    before = upstream.request_count()
    replayer = start_proxy(
        policy,
        tape=tape,
        sets=[*replay_sets(tape, source, "live"), f"failcore_state_dir={tmp_path / 'state'}"],
    )
    assert three_calls(replayer) == recorded == [200, 200, 200], "a $0 replay is not over a request budget"
    with proxied_client(replayer) as client:  # live calls still count: two are allowed, then 429
        live = [client.get(f"{upstream.url}/json?live={i}").status_code for i in range(3)]
    replayer.stop()
    assert live == [200, 200, 429]
    assert upstream.request_count() == before + 2


def test_pace_recorded_reproduces_the_gaps(start_proxy, upstream, tmp_path):
    tape = tmp_path / "tape"

    def fetch(proxy: ProxyThread) -> tuple[list[bytes], list[float]]:
        chunks, arrivals = [], []
        with proxied_client(proxy) as client, client.stream("GET", upstream.url + "/sse?n=3&gap=0.25") as r:
            start = time.monotonic()
            for chunk in r.iter_raw():
                chunks.append(chunk)
                arrivals.append(time.monotonic() - start)
        return chunks, arrivals

    source, (recorded_chunks, _) = record(start_proxy, tape, fetch)
    fast = start_proxy(tape=tape, sets=replay_sets(tape, source))
    fast_chunks, fast_arrivals = fetch(fast)
    fast.stop()
    paced = start_proxy(tape=tape, sets=[*replay_sets(tape, source), "failcore_replay_pace=recorded"])
    paced_chunks, paced_arrivals = fetch(paced)
    paced.stop()

    assert fast_chunks == paced_chunks == recorded_chunks
    assert len(recorded_chunks) == 3
    assert fast_arrivals[-1] < 0.2
    assert paced_arrivals[-1] > 0.4
    assert paced_arrivals[1] - paced_arrivals[0] > 0.15


def test_replayed_compressed_body_is_served_decoded(start_proxy, upstream, tmp_path):
    tape = tmp_path / "tape"

    def fetch(proxy: ProxyThread) -> httpx.Response:
        with proxied_client(proxy) as client:
            response = client.get(upstream.url + "/gzip")
            response.read()
            return response

    source, recorded = record(start_proxy, tape, fetch)
    replayer = start_proxy(tape=tape, sets=replay_sets(tape, source))
    replayed = fetch(replayer)
    replayer.stop()
    assert recorded.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in replayed.headers
    assert replayed.content == recorded.content
    assert replayed.headers["content-length"] == str(len(recorded.content))


def test_bad_replay_options_stop_start_up(start_proxy, tmp_path):
    from failcore.runner import ProxyStartError

    with pytest.raises(ProxyStartError, match="no tape directory"):
        start_proxy(sets=[f"failcore_replay={tmp_path / 'missing'}"])
    with pytest.raises(ProxyStartError, match="on_miss"):
        start_proxy(sets=["failcore_replay_on_miss=maybe"])


def test_a_recording_with_an_edited_line_is_not_replayed(start_proxy, upstream, tmp_path):
    from failcore.runner import ProxyStartError

    tape = tmp_path / "tape"
    source, _ = record(start_proxy, tape, lambda proxy: OpenAiAgent(proxy, upstream).run("weather in Paris"))
    sets = replay_sets(tape, source)
    start_proxy(tape=tmp_path / "check", sets=sets).stop()  # intact: it replays
    segment = sorted(tape.glob("seg-*.jsonl"))[0]
    lines = segment.read_bytes().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if b'"kind":"network"' in line)
    event = orjson.loads(lines[index])
    event["status"] = 299  # still JSON; its hash no longer matches
    lines[index] = orjson.dumps(event) + b"\n"
    segment.write_bytes(b"".join(lines))
    named = rf"not as failcore wrote them \({segment.name} line {index + 1}:"
    with pytest.raises(ProxyStartError, match=named):
        start_proxy(tape=tmp_path / "again", sets=sets)


# ---------------------------------------------------------------- pure matching


def shape(body: bytes, path: str = "/v1/chat/completions") -> RequestShape:
    return RequestShape.make("POST", "https", "API.example.com", 443, path, normalize_body(body, IGNORE))


def exchange(seq: int, body: bytes, path: str = "/v1/chat/completions") -> RecordedExchange:
    return RecordedExchange(seq, f"POST {path}", shape(body, path), None, "test", (), None)


def test_json_bodies_match_regardless_of_key_order_and_volatile_fields():
    a = shape(b'{"model":"m","messages":[{"role":"user","content":"hi"}],"metadata":{"user_id":"1"}}')
    b = shape(b'{"metadata":{"user_id":"2"},"messages":[{"content":"hi","role":"user"}],"model":"m"}')
    c = shape(b'{"model":"m","messages":[{"role":"user","content":"ho"}]}')
    assert a.key() == b.key() != c.key()
    assert shape(b"x", "/p?b=2&a=1").key() == shape(b"x", "/p?a=1&b=2").key()
    assert shape(b"x").host == "api.example.com"


def test_wildcard_pointer_ignores_a_field_in_every_list_item():
    ignore = (parse_pointer("/messages/*/id"),)
    a = normalize_body(b'{"messages":[{"id":"1","c":"x"},{"id":"2","c":"y"}]}', ignore)
    b = normalize_body(b'{"messages":[{"id":"9","c":"x"},{"id":"8","c":"y"}]}', ignore)
    assert a.key == b.key
    assert parse_pointer("/a~1b/c~0d") == ("a/b", "c~d")
    assert format_pointer(("a/b", "c~d", 3)) == "/a~1b/c~0d/3"


def test_nth_identical_request_gets_the_nth_recording():
    index = ReplayIndex([exchange(1, b'{"q":1}'), exchange(2, b'{"q":2}'), exchange(3, b'{"q":1}')])
    live = shape(b'{"q":1}')
    assert [index.take(live).seq, index.take(live).seq, index.take(live)] == [1, 3, None]  # type: ignore[union-attr]
    assert index.take(shape(b'{"q":2}')).seq == 2  # type: ignore[union-attr]
    # All used: the closest is still the recording of the same route.
    assert index.closest(shape(b'{"q":5}')).seq == 1  # type: ignore[union-attr]


def test_first_difference_walks_in_document_order():
    diff = first_difference({"a": 1, "b": [1, 2, {"c": "x"}]}, {"a": 1, "b": [1, 2, {"c": "y"}]})
    assert diff is not None and diff.pointer == ("b", "2", "c") and (diff.recorded, diff.live) == ("x", "y")
    assert first_difference([1, 2], [1, 2, 3]).pointer == ("2",)  # type: ignore[union-attr]
    assert first_difference({"a": 1}, {"a": True}).pointer == ("a",)  # type: ignore[union-attr]
    assert first_difference({"a": [1]}, {"a": [1]}) is None


def test_miss_body_masks_dlp_flagged_values():
    secret = b'{"messages":[{"role":"user","content":"key sk-live-AAAA"}]}'
    recorded = RecordedExchange(
        7,
        "POST /v1/chat/completions",
        shape(secret),
        None,
        None,
        (parse_pointer("/messages/0/content"),),
        None,
    )
    live = shape(b'{"messages":[{"role":"user","content":"key sk-live-BBBB"}]}')
    error = miss_body(live, recorded, "no recorded request matches")["error"]
    assert error["closest"]["seq"] == 7
    assert error["first_difference"]["pointer"] == "/messages/0/content"
    assert error["first_difference"]["recorded"] == error["first_difference"]["live"] == "[masked: DLP hit]"
    assert "sk-live" not in orjson.dumps(error).decode()


def test_unservable_recordings_say_why():
    truncated = {"status": 200, "response": {"headers": [], "body": {"truncated": True, "text": "abc"}}}
    assert (
        canned_from_event(truncated)[1]
        == "the recorded response body was truncated in the tape, so it cannot be served"
    )
    assert "no response" in (
        canned_from_event({"status": None, "response": None, "fail_reason": "timeout"})[1] or ""
    )
    ok, why = canned_from_event(
        {
            "status": 200,
            "response": {
                "reason": "OK",
                "headers": [
                    ["Set-Cookie", "[redacted hmac-sha256:abc]"],
                    ["Content-Length", "3"],
                    ["X-A", "1"],
                ],
                "body": {"truncated": False, "binary": True, "b64": "AAEC"},
            },
            "stream": {"chunks": [[0.0, 1], [5.0, 2]], "chunk_count": 2, "chunks_truncated": False},
        }
    )
    assert why is None and ok is not None
    assert (ok.body, ok.chunks, ok.offsets_ms, ok.headers) == (
        b"\x00\x01\x02",
        (1, 2),
        (0.0, 5.0),
        (("X-A", "1"),),
    )


def test_rechunker_cuts_at_the_recorded_boundaries():
    tap = BodyTap(1024)
    cut = Rechunker([3, 2, 4], tap)
    assert cut(b"ab") == []
    assert cut(b"cdefgh") == [b"abc", b"de"]
    assert cut(b"i") == [b"fghi"]
    assert cut(b"") == []
    assert bytes(tap.kept) == b"abcdefghi" and [n for _, n in tap.chunks] == [3, 2, 4]
    extra = Rechunker([2], BodyTap(16))
    assert extra(b"abcd") == [b"ab", b"cd"]


def test_rechunker_reports_an_inner_failure_and_asks_again_about_the_next_chunk():
    reports: list[str] = []
    seen: list[bytes] = []

    def inner(chunk: bytes) -> bytes:
        seen.append(chunk)
        if len(seen) == 1:
            raise ValueError("inner broke")
        return chunk

    def failed(exc: Exception, part: object) -> bool:
        reports.append(f"{type(exc).__name__}: {exc}")
        return False  # fail-open

    cut = Rechunker([2, 2], inner, failed)
    assert cut(b"abcd") == [b"ab", b"cd"], "the chunk the inner stream failed on still goes on"
    assert seen == [b"ab", b"cd"] and reports == ["ValueError: inner broke"]


def test_override_files_and_specs(tmp_path):
    good = tmp_path / "o.json"
    good.write_text('{"status": 201, "headers": {"X-Y": "z"}, "body": {"ok": true}}')
    canned = load_override(good)
    assert (canned.status, canned.body, canned.chunks) == (201, b'{"ok":true}', None)
    assert ("content-type", "application/json") in canned.headers
    assert parse_overrides([f"3={good}"])[3][1] == canned
    for spec in ("x=1", "0=f", "3"):
        with pytest.raises(ValueError, match="N=FILE"):
            parse_overrides([spec])
    both = tmp_path / "both.yaml"
    both.write_text("body: a\nsse: [b]\n")
    with pytest.raises(ValueError, match="not both"):
        load_override(both)
    typo = tmp_path / "typo.yaml"
    typo.write_text("stauts: 200\nbody: x\n")
    with pytest.raises(ValueError, match=r"unknown keys \['stauts'\]; allowed: status \(int"):
        load_override(typo)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("An override FILE is JSON or YAML", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    documented = tmp_path / "documented.yaml"
    documented.write_text(example)
    assert load_override(documented).chunks is not None  # the README's example loads as an SSE answer
    assert replay_headers([["Transfer-Encoding", "chunked"], ["Content-Type", "text/plain"]]) == (
        ("Content-Type", "text/plain"),
    )


def test_replay_source_parsing(tmp_path):
    assert parse_replay_source(str(tmp_path)) == (tmp_path, None)
    assert parse_replay_source(f"{tmp_path}:run-1") == (tmp_path, "run-1")
    assert parse_replay_source("relative/tape") == (Path("relative/tape"), None)
