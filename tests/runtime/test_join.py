"""run() inside `failcore run -- CMD` joins that run: the child's tool, file and connect events land on
the proxy's tape between its network events, and the tape verifies."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson

from failcore.demo.server import StandIn
from tests.helpers import github_token, read_tape
from tests.runtime.helpers import AGENT, failcore_run


def test_a_child_joins_failcore_run_and_the_mixed_tape_verifies(
    workdir: Path, tmp_path: Path, upstream: StandIn
) -> None:
    script, tape = tmp_path / "agent.py", tmp_path / "tape"
    script.write_text(AGENT)
    result = failcore_run(tape, upstream, sys.executable, str(script), upstream.url, cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (workdir / "answer.txt").read_text() == "failcore-standin"
    run_id, joined, child_tape = result.stdout.split()
    assert joined == "True" and Path(child_tape) == tape

    events = [e for e in read_tape(tape) if e["kind"] not in ("checkpoint",)]
    assert {e["run"] for e in events} == {run_id}
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end" and "internal_error" not in kinds
    child = [e for e in events if e["kind"] in ("tool", "fs", "exec", "connect")]
    assert [(e["kind"], e["action"].split(".")[-1]) for e in child] == [
        ("connect", "connect"),  # to the failcore proxy: allowed (its traffic is decided there)
        ("tool", "fetch"),
        ("fs", "write"),
        ("tool", "save"),
    ]
    connect, fetch, write, save = child
    assert connect["rule"] == "net.failcore_proxy" and connect["call"] == fetch["call"]
    assert write["call"] == save["call"] and fetch["outcome"] == save["outcome"] == "ok"
    assert fetch["tool"]["origin"]["pid"] == save["tool"]["origin"]["pid"] != os.getpid()
    (exchange,) = [e for e in events if e["kind"] == "network"]
    assert (exchange["path"], exchange["status"]) == ("/json", 200)
    # The exchange happened inside the fetch call, after its connect and before the write: so it sits
    # on the tape (seq) and in time.
    assert [e["seq"] for e in (connect, exchange, fetch, write, save)] == sorted(
        e["seq"] for e in (connect, exchange, fetch, write, save)
    )
    assert connect["ts_start"] <= exchange["ts_start"] and fetch["ts_start"] <= exchange["ts_start"]
    assert exchange["ts_start"] <= fetch["ts_end"] <= write["ts_start"]

    verify = subprocess.run(
        [sys.executable, "-m", "failcore.cli", "verify", str(tape), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert orjson.loads(verify.stdout)["status"] == "ok"


ORDERED_AGENT = textwrap.dedent(
    """
    import sys

    import httpx

    from failcore import guard, run

    url, token = sys.argv[1], sys.argv[2]
    with run() as ctx, httpx.Client(timeout=30) as client:

        @guard
        def note(text: str) -> str:
            return "noted " + text[:4]

        for i in range(3):
            client.get(f"{url}/json?step={i}")
            note(f"step {i} with {token}")  # a secret in a tool argument, not named as one
        client.get(url + "/json?step=last")
    """
)


def test_a_joined_childs_tool_calls_sit_between_its_exchanges_on_the_tape_and_the_run_masks_them(
    workdir: Path, tmp_path: Path, upstream: StandIn
) -> None:
    """The child sends each tool event before it goes on, so the tape's own order (seq) is the order
    things happened: exchange, tool, exchange, tool, … And the child never waits for a DLP compile of
    its own: the enclosing run masks a secret in a tool's argument with its rules before writing."""
    token = github_token()
    script, tape = tmp_path / "agent.py", tmp_path / "tape"
    script.write_text(ORDERED_AGENT)
    result = failcore_run(tape, upstream, sys.executable, str(script), upstream.url, token, cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr

    events = read_tape(tape)
    steps = [e for e in events if e["kind"] in ("network", "tool")]
    assert [e["kind"] for e in steps] == ["network", "tool"] * 3 + ["network"]
    assert [e["path"] for e in steps if e["kind"] == "network"] == [
        "/json?step=0", "/json?step=1", "/json?step=2", "/json?step=last",
    ]  # fmt: skip
    for tool in (e for e in steps if e["kind"] == "tool"):
        assert token not in orjson.dumps(tool).decode()
        assert [h["location"] for h in tool["dlp"]["hits"]] == ["tool.args/text"]
    assert token.encode() not in b"".join(p.read_bytes() for p in sorted(tape.glob("seg-*.jsonl")))


def test_a_joined_child_without_network_that_exits_at_once_still_has_its_tool_call_on_the_tape(
    workdir: Path, tmp_path: Path
) -> None:
    """`failcore run` starts the command while mitmproxy loads and skips the proxy for a command that
    made no connection; a child that joined the run still gets its events written (and masked)."""
    token = github_token()
    script, tape = tmp_path / "agent.py", tmp_path / "tape"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from failcore import guard, run

            with run():
                guard(lambda text: len(text), name="count")(sys.argv[1])
            """
        )
    )
    _quick_run(tape, script, workdir, token)
    (tool,) = [e for e in read_tape(tape) if e["kind"] == "tool"]
    assert tool["action"] == "count" and tool["outcome"] == "ok"
    assert [h["location"] for h in tool["dlp"]["hits"]] == ["tool.args/text"]
    assert token.encode() not in b"".join(p.read_bytes() for p in sorted(tape.glob("seg-*.jsonl")))


def test_a_joined_childs_summary_and_error_are_masked_before_they_are_cut(
    workdir: Path, tmp_path: Path
) -> None:
    """The child sends its result summary and error uncut; the parent masks them, then cuts them to 200
    and 1,000 characters (cut in the child, a token across the cut kept its first part in clear)."""
    tokens = [github_token(), github_token(), github_token()]
    script, tape = tmp_path / "agent.py", tmp_path / "tape"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from failcore import guard, run

            def fail(token):
                raise RuntimeError("x" * 965 + " " + token)

            with run():
                answer = lambda token, note: "x" * 179 + " " + token + " " + "y" * 300  # noqa: E731
                guard(answer, name="answer")(sys.argv[1], "n" * 4075 + " " + sys.argv[3] + " " + "z" * 99)
                try:
                    guard(fail, name="fail")(sys.argv[2])
                except RuntimeError:
                    pass
            """
        )
    )
    _quick_run(tape, script, workdir, *tokens)
    raw = b"".join(p.read_bytes() for p in sorted(tape.glob("seg-*.jsonl")))
    for token in tokens:
        assert token[:20].encode() not in raw
    answer, fail = [e for e in read_tape(tape) if e["kind"] == "tool"]
    assert len(answer["tool"]["result"]["summary"]) == 200 and len(fail["error"]) <= 1000
    assert "ghp_…" + tokens[0][-4:] in answer["tool"]["result"]["summary"]
    assert fail["error"].endswith("ghp_…" + tokens[1][-4:])
    assert answer["tool"]["args"]["note"].startswith("n" * 4075 + " ghp_…" + tokens[2][-4:])


def test_a_joined_childs_huge_error_or_arguments_lose_no_later_event(workdir: Path, tmp_path: Path) -> None:
    """A tool error echoing 2 MiB of input, and arguments that make an event longer than the channel's
    1 MiB line limit: the first is cut in the child, the second refused (said on the tape); neither
    loses the child's later events (the channel used to drop the connection, and every event after)."""
    script, tape = tmp_path / "agent.py", tmp_path / "tape"
    script.write_text(
        textwrap.dedent(
            """
            from failcore import guard, run

            def big_error():
                raise RuntimeError("E" * (2 << 20))

            with run():
                try:
                    guard(big_error, name="big_error")()
                except RuntimeError:
                    pass
                guard(lambda rows: len(rows), name="big_args")([["a" * 4000] * 60] * 60)
                guard(lambda: "ok", name="after")()
                guard(lambda: "ok", name="after2")()
            """
        )
    )
    _quick_run(tape, script, workdir)
    events = read_tape(tape)
    tools = {e["action"]: e for e in events if e["kind"] == "tool"}
    assert sorted(tools) == ["after", "after2", "big_error"]
    assert len(tools["big_error"]["error"]) == 1000 and tools["big_error"]["outcome"] == "FAIL"
    errors = [e["error"] for e in events if e["kind"] == "internal_error"]
    assert len(errors) == 1 and "a line longer than 1048576 bytes" in errors[0]


def _quick_run(tape: Path, script: Path, workdir: Path, *args: str) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith("FAILCORE_E")
    }
    # No --set: the quick start applies (the command starts before mitmproxy has loaded).
    result = subprocess.run(
        [sys.executable, "-m", "failcore.cli", "run", "--tape", str(tape), "--",
         sys.executable, str(script), *args],
        capture_output=True, text=True, timeout=120, env=env, cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
