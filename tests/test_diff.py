"""`failcore diff`: aligning two runs' requests and naming where the second departs from the first."""

from __future__ import annotations

from typing import Any

import orjson

from failcore.cli import main
from failcore.diff import align, diff_requests, run_requests
from failcore.replay.pointers import parse_pointer
from failcore.replay.request import DEFAULT_IGNORED_POINTERS
from tests.replay_agents import OpenAiAgent, replay_sets, run_id

IGNORE = tuple(parse_pointer(p) for p in DEFAULT_IGNORED_POINTERS)


def event(
    seq: int,
    body: dict[str, Any] | None = None,
    *,
    host: str = "api.openai.com",
    path: str = "/v1/chat/completions",
    method: str = "POST",
    decision: str = "ALLOW",
    status: int = 200,
    tokens: int | None = None,
) -> dict[str, Any]:
    text = orjson.dumps(body).decode() if body is not None else ""
    return {
        "kind": "network",
        "seq": seq,
        "action": "http.request",
        "method": method,
        "path": path,
        "summary": f"{method} {path}",
        "target": {"host": host, "port": 443, "scheme": "https"},
        "decision": decision,
        "status": status,
        "request": {"body": {"text": text, "truncated": False} if text else None},
        "llm": {"usage": {"known": True, "input_tokens": tokens, "output_tokens": 1}, "cost": {"usd": 0.5}}
        if tokens is not None
        else None,
    }


def diff(a: list[dict[str, Any]], b: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    return diff_requests("A", run_requests(a, IGNORE), "B", run_requests(b, IGNORE))


def test_identical_runs_have_the_same_shape():
    run = [
        event(1, {"messages": [{"content": "hi"}]}, tokens=10),
        event(2, None, host="x.test", method="GET"),
    ]
    result = diff(run, [{**e, "seq": e["seq"] + 10} for e in run])
    assert not result.diverged
    assert result.first_divergence is None
    assert result.delta() == {"llm_calls": 0, "input_tokens": 0, "output_tokens": 0, "usd": 0.0}


def test_changed_prompt_names_the_pointer_and_both_values():
    a = [
        event(1, {"model": "m", "messages": [{"content": "hi"}]}),
        event(2, {"messages": [{"content": "x"}]}),
    ]
    b = [
        event(5, {"messages": [{"content": "hi"}], "model": "m"}),
        event(6, {"messages": [{"content": "y"}]}),
    ]
    result = diff(a, b)
    assert result.diverged
    first = result.first_divergence
    assert first is not None
    assert (first["kind"], first["pointer"], first["recorded"], first["live"]) == (
        "request",
        "/messages/0/content",
        "x",
        "y",
    )
    assert (first["a"]["seq"], first["b"]["seq"]) == (2, 6)


def test_added_host_and_changed_decision_and_status():
    a = [event(1, {"q": 1}, tokens=10), event(2, {"q": 2}, tokens=10)]
    b = [
        event(1, {"q": 1}, tokens=10),
        event(2, None, host="evil.test", path="/upload", method="PUT", decision="BLOCK", status=403),
        event(3, {"q": 2}, decision="WARN", status=500, tokens=30),
    ]
    result = diff(a, b)
    assert result.hosts_only_in_b == ["evil.test"] and result.hosts_only_in_a == []
    assert result.first_divergence == {
        "kind": "only_in_b",
        "b": {"seq": 2, "summary": "PUT /upload", "host": "evil.test"},
    }
    assert [(c["from"], c["to"]) for c in result.decision_changes] == [("ALLOW", "WARN")]
    assert [(c["from"], c["to"]) for c in result.status_changes] == [(200, 500)]
    assert result.delta()["input_tokens"] == 20
    assert result.delta()["usd"] == 0.0


def test_alignment_survives_an_inserted_request():
    a = run_requests([event(1, {"q": 1}), event(2, {"q": 2}, path="/b")], IGNORE)
    b = run_requests([event(1, {"q": 1}), event(2, None, path="/x"), event(3, {"q": 2}, path="/b")], IGNORE)
    assert align(a, b) == [(0, 0), (None, 1), (1, 2)]


def test_dlp_flagged_values_are_masked_in_the_diff():
    hit = {"hits": [{"location": "request.body:/messages/0/content"}]}
    a = [{**event(1, {"messages": [{"content": "sk-secret-1"}]}), "dlp": hit}]
    b = [event(1, {"messages": [{"content": "sk-secret-2"}]})]
    result = diff(a, b)
    assert result.first_divergence is not None
    assert "sk-secret" not in orjson.dumps(result.to_dict()).decode()


def test_a_dlp_block_of_the_wrong_type_is_no_crash():
    """Recorded content is hostile: `dlp` or its hits holding a number or a list is counted as no hits."""
    for dlp in (5, [1, 2], {"hits": 5}, {"hits": [5, "x"]}):
        a = [{**event(1, {"q": 1}), "dlp": dlp}]
        b = [event(1, {"q": 2})]
        assert diff(a, b).first_divergence is not None


def test_cli_diff_of_a_replay_a_changed_prompt_and_an_unknown_run(start_proxy, upstream, tmp_path, capsys):
    tape = tmp_path / "tape"
    recorder = start_proxy(tape=tape)
    OpenAiAgent(recorder, upstream).run("what is the weather")
    recorder.stop()
    replayer = start_proxy(tape=tape, sets=replay_sets(tape, run_id(recorder)))
    OpenAiAgent(replayer, upstream).run("what is the weather")
    replayer.stop()
    changed = start_proxy(tape=tape)
    OpenAiAgent(changed, upstream).run("what is the time")
    changed.stop()
    capsys.readouterr()

    assert main(["diff", run_id(recorder), run_id(replayer), "--tape", str(tape), "--json"]) == 0
    same = orjson.loads(capsys.readouterr().out)
    assert same["diverged"] is False and same["requests"] == {"a": 2, "b": 2}

    assert main(["diff", run_id(recorder), run_id(changed), "--tape", str(tape), "--json"]) == 1
    first = orjson.loads(capsys.readouterr().out)["first_divergence"]
    assert first["pointer"] == "/messages/0/content"
    assert (first["recorded"], first["live"]) == ("what is the weather", "what is the time")

    assert main(["diff", run_id(recorder), run_id(changed), "--tape", str(tape)]) == 1
    text = capsys.readouterr().out
    assert "/messages/0/content" in text and "what is the time" in text

    assert main(["diff", run_id(recorder), "run-nope", "--tape", str(tape)]) == 2
