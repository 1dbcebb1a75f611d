"""@guard(): one tool event per call, its arguments redacted and masked, its result, outcome and
effects; run() opens a run of its own on a tape that verifies."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from failcore import Blocked, guard, run
from failcore.tape.verify import verify_tape
from tests.helpers import github_token, read_tape
from tests.runtime.helpers import runtime_events, tape_bytes, tools


def test_one_tool_event_per_call_with_arguments_result_and_effects(workdir: Path, tmp_path: Path) -> None:
    tape = tmp_path / "tape"
    with run(tape=tape) as ctx:

        @guard()
        def write_file(path: str, content: str) -> dict[str, object]:
            with open(path, "w") as f:
                f.write(content)
            return {"written": len(content), "path": path}

        result = write_file("notes.txt", content="hello")
    assert result == {"written": 5, "path": "notes.txt"}
    assert (workdir / "notes.txt").read_text() == "hello"
    (fs, tool) = runtime_events(tape)
    assert fs["kind"] == "fs" and fs["action"] == "fs.write" and fs["call"] == tool["call"]
    assert fs["fs"]["path"] == str((workdir / "notes.txt").resolve()) and fs["decision"] == "ALLOW"
    assert tool["action"].endswith("write_file") and tool["outcome"] == "ok" and tool["parent_call"] is None
    assert tool["tool"]["args"] == {"path": "notes.txt", "content": "hello"}
    expected = json.dumps(result, separators=(",", ":")).encode()
    assert tool["tool"]["result"] == {
        "type": "json",
        "summary": expected.decode(),
        "sha256": hashlib.sha256(expected).hexdigest(),
        "bytes": len(expected),
    }
    assert tool["tool"]["effects"] == {"fs": 1, "exec": 0, "connect": 0, "blocked": 0}
    assert tool["tool"]["origin"]["thread"] == threading.current_thread().name
    assert tool["latency_ms"] >= 0 and tool["ts_end"] >= tool["ts_start"]
    assert ctx.tool_calls == 1 and ctx.events == 2 and ctx.run_id == tool["run"]
    kinds = [e["kind"] for e in read_tape(tape)]
    assert kinds[0] == "run_start" and "run_end" in kinds
    report = verify_tape(tape)
    assert report.ok and report.status == "ok", report.to_dict()


def test_credentials_in_arguments_never_reach_the_disk(workdir: Path, tmp_path: Path) -> None:
    tape = tmp_path / "tape"
    key, leaked = github_token(), github_token()
    with run(tape=tape):

        @guard
        def call_api(url: str, api_key: str, note: str) -> str:
            return f"echo {note}"

        call_api("https://example.test/", api_key=key, note=f"the token is {leaked} ok")
    raw = tape_bytes(tape)
    assert key.encode() not in raw and leaked.encode() not in raw
    (tool,) = tools(tape)
    assert tool["tool"]["args"]["api_key"].startswith("[redacted hmac-sha256:")
    assert leaked[:4] in tool["tool"]["args"]["note"] and "ok" in tool["tool"]["args"]["note"]
    assert [h["rule"] for h in tool["dlp"]["hits"]] == ["github-pat", "github-pat"]  # argument and result
    assert {h["location"] for h in tool["dlp"]["hits"]} == {"tool.args/note", "tool.result"}


def test_a_secret_in_a_file_name_never_reaches_the_disk(workdir: Path, tmp_path: Path) -> None:
    """The fs event's path, its summary and (when refused) its reason name the file: masked like
    arguments. The event's time is when the write was seen, inside the call."""
    tape, token = tmp_path / "tape", github_token()
    with run(tape=tape, policy="fs_safe", strict=True):

        @guard
        def save(name: str) -> None:
            Path(name).write_text("x")

        save(f"cache-{token}.txt")
        with pytest.raises(Blocked):
            save(f"../outside/{token}.txt")
    raw = tape_bytes(tape)
    assert token.encode() not in raw
    assert (workdir / f"cache-{token}.txt").exists() and not (tmp_path / "outside" / f"{token}.txt").exists()
    written, refused = [e for e in runtime_events(tape) if e["kind"] == "fs"]
    assert (written["decision"], refused["decision"]) == ("ALLOW", "BLOCK")
    for fs in (written, refused):
        assert fs["fs"]["path"].endswith(".txt") and "ghp_" in fs["fs"]["path"]
        assert "fs.path" in {h["location"] for h in fs["dlp"]["hits"]}
    first, second = tools(tape)
    assert first["ts_start"] <= written["ts_start"] <= first["ts_end"]
    assert second["ts_start"] <= refused["ts_start"] <= second["ts_end"]


def test_a_secret_in_a_spawned_programs_arguments_never_reaches_the_disk(
    workdir: Path, tmp_path: Path
) -> None:
    tape, token = tmp_path / "tape", github_token()
    with run(tape=tape):

        @guard
        def launch() -> int:
            return subprocess.run([sys.executable, "-c", "pass", token], check=True).returncode

        assert launch() == 0
    assert token.encode() not in tape_bytes(tape)
    (spawn,) = [e for e in runtime_events(tape) if e["kind"] == "exec"]
    assert spawn["exec"]["argv"][-1].startswith("ghp_") and spawn["exec"]["argv"][-1] != token
    assert {h["location"] for h in spawn["dlp"]["hits"]} == {"exec.argv/3"}


def test_a_tool_that_raises_ends_fail_tool_error_and_the_exception_passes_through(
    workdir: Path, tmp_path: Path
) -> None:
    tape = tmp_path / "tape"
    with run(tape=tape):

        @guard(name="lookup")
        def lookup(key: str) -> str:
            raise KeyError(key)

        with pytest.raises(KeyError, match="missing"):
            lookup("missing")
    (tool,) = tools(tape)
    assert tool["action"] == "lookup" and tool["tool"]["name"] == "lookup"
    assert (tool["outcome"], tool["fail_reason"]) == ("FAIL", "tool_error")
    assert tool["error"] == "KeyError: 'missing'" and tool["tool"]["result"]["type"] == "error"


def test_a_secret_across_the_cut_of_a_summary_or_error_never_reaches_the_disk(
    workdir: Path, tmp_path: Path
) -> None:
    """A result's summary (200 characters) and an error (1,000) are masked before they are cut: cut
    first, the part of a token before the cut is too short to match a rule and was written in clear."""
    tape, tokens = tmp_path / "tape", [github_token() for _ in range(3)]
    with run(tape=tape):

        @guard
        def answer(note: str = "") -> str:
            return "x" * 179 + " " + tokens[0] + " and more"  # the token spans characters 180-220

        @guard
        def fetch() -> None:
            raise RuntimeError("x" * 965 + " " + tokens[1])  # after "RuntimeError: ", 980-1020

        answer("y" * 4075 + " " + tokens[2] + " " + "z" * 100)  # an argument cut at 4,096: 4076-4116
        with pytest.raises(RuntimeError):
            fetch()
    raw = tape_bytes(tape)
    for token in tokens:
        assert token[:20].encode() not in raw
    first, second = tools(tape)
    assert first["tool"]["result"]["summary"].endswith("ghp_…" + tokens[0][-4:] + " and more")
    assert second["error"].endswith("ghp_…" + tokens[1][-4:])
    note = first["tool"]["args"]["note"]
    assert note.startswith("y" * 4075 + " ghp_…" + tokens[2][-4:]) and len(note) <= 4096 + len("…[truncated]")
    assert [h["location"] for h in first["dlp"]["hits"]] == ["tool.args/note", "tool.result"]
    assert {h["location"] for h in second["dlp"]["hits"]} == {"tool.result", "tool.error"}


def test_async_tools_and_tasks_each_keep_their_own_call(workdir: Path, tmp_path: Path) -> None:
    tape = tmp_path / "tape"

    @guard
    async def fetch(i: int) -> int:
        await asyncio.sleep(0.01 * (3 - i))  # interleave: the last task to start finishes first
        with open(f"task{i}.txt", "w") as f:
            f.write(str(i))
        return i

    async def main() -> list[int]:
        async with run(tape=tape):
            return await asyncio.gather(*(fetch(i) for i in range(3)))

    assert asyncio.run(main()) == [0, 1, 2]
    events = runtime_events(tape)
    calls = {e["tool"]["args"]["i"]: e["call"] for e in events if e["kind"] == "tool"}
    assert len(set(calls.values())) == 3
    for e in events:
        if e["kind"] == "fs":
            i = int(Path(e["fs"]["path"]).stem.removeprefix("task"))
            assert e["call"] == calls[i], "an effect was attributed to another task's call"
    assert {e["tool"]["origin"]["task"] is not None for e in events if e["kind"] == "tool"} == {True}


def test_nested_guards_name_their_parent_call(workdir: Path, tmp_path: Path) -> None:
    tape = tmp_path / "tape"
    with run(tape=tape):

        @guard
        def inner() -> str:
            Path("inner.txt").write_text("x")
            return "inner"

        @guard
        def outer() -> str:
            return inner() + "+outer"

        assert outer() == "inner+outer"
    events = runtime_events(tape)
    fs, inner_ev, outer_ev = events
    assert (inner_ev["action"].split(".")[-1], outer_ev["action"].split(".")[-1]) == ("inner", "outer")
    assert inner_ev["parent_call"] == outer_ev["call"] and outer_ev["parent_call"] is None
    assert fs["call"] == inner_ev["call"] and fs["parent_call"] == outer_ev["call"]


def test_a_thread_started_inside_a_guarded_call_is_attributed_to_it(workdir: Path, tmp_path: Path) -> None:
    tape = tmp_path / "tape"
    with run(tape=tape):

        @guard
        def fan_out() -> None:
            worker = threading.Thread(target=lambda: Path("from-thread.txt").write_text("t"))
            worker.start()
            worker.join()

        fan_out()
        # Outside any guarded call the same operation is nobody's effect.
        Path("unguarded.txt").write_text("u")
    fs = [e for e in runtime_events(tape) if e["kind"] == "fs"]
    (tool,) = tools(tape)
    assert [Path(e["fs"]["path"]).name for e in fs] == ["from-thread.txt"]
    assert fs[0]["call"] == tool["call"] and tool["tool"]["effects"]["fs"] == 1


def test_a_guarded_call_on_a_thread_without_the_run_joins_the_open_run(workdir: Path, tmp_path: Path) -> None:
    tape = tmp_path / "tape"

    @guard
    def work() -> str:
        return "done"

    results: list[str] = []
    started = threading.Event()
    release = threading.Event()

    def thread_main() -> None:  # started before run(): its context carries no run
        started.set()
        release.wait(5)
        results.append(work())

    worker = threading.Thread(target=thread_main)
    worker.start()
    started.wait(5)
    with run(tape=tape):
        release.set()
        worker.join(5)
    assert results == ["done"]
    (tool,) = tools(tape)
    assert tool["tool"]["origin"]["thread"] == worker.name


def test_a_guard_outside_any_run_is_a_plain_call(workdir: Path) -> None:
    @guard
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, 3) == 5


CONTRACT_POLICY = "version: 1\ntools:\n  summarize:\n    output: json\n"


@pytest.mark.parametrize(
    ("result", "contract"),
    [
        ("Sure! Here is the summary you asked for.", {"expected": "json", "got": "text", "drift": True}),
        ({"summary": "short"}, None),
        ('{"summary": "short"}', None),
    ],
)
def test_output_contract_drift_is_recorded(
    workdir: Path, tmp_path: Path, result: object, contract: dict[str, object] | None
) -> None:
    policy, tape = tmp_path / "policy.yaml", tmp_path / "tape"
    policy.write_text(CONTRACT_POLICY)
    with run(policy=policy, tape=tape):
        assert guard(lambda: result, name="summarize")() == result
    (tool,) = tools(tape)
    assert tool["tool"]["contract"] == contract
    drift = [w for w in tool["warnings"] if w["reason"] == "contract_drift"]
    assert len(drift) == (1 if contract else 0)


def test_asyncio_to_thread_inside_a_guarded_call_carries_the_call(workdir: Path, tmp_path: Path) -> None:
    tape = tmp_path / "tape"

    @guard
    async def offload() -> None:
        await asyncio.to_thread(Path("offloaded.txt").write_text, "x")

    async def main() -> None:
        async with run(tape=tape):
            await offload()

    asyncio.run(main())
    fs, tool = runtime_events(tape)
    assert Path(fs["fs"]["path"]).name == "offloaded.txt" and fs["call"] == tool["call"]
    assert fs["fs"]["event"] == "open"
