"""A tampered tape is never shown as if it were clean: the `failcore` commands, run as a user runs them
(a subprocess with its own FAILCORE_HOME), on a tape `failcore run` recorded and someone then changed.

- A file beside the segments under another spelling of a segment's name (more digits, non-ASCII digits)
  is read by no command, and `failcore verify` names it as a break.
- A line edited, or cut short, is still shown when it parses, but `list`, `show`, `tail` and `run` name it
  on stderr by segment and line, without a traceback, and `list`/`show`/`tail` exit 1 (`tail -f` goes on
  after it); `report` exits 1 on a tape verify calls BROKEN.
- The directories failcore creates (its home, the view cache, a tape's parents) are 0700.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from failcore.tape.reader import GENESIS_PREV, line_hash
from failcore.tape.writer import encode_line

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120
SEGMENT = "seg-000001.jsonl"
# Names that older readers took for segment 1 (`\d` matches any Unicode digit, `$` a final newline).
OTHER_SPELLINGS = [
    "seg-0000001.jsonl",
    "seg-\u0660\u0660\u0660\u0660\u0660\u0661.jsonl",  # ARABIC-INDIC DIGIT ZERO … ONE
    "seg-\uff10\uff10\uff10\uff10\uff10\uff11.jsonl",  # FULLWIDTH DIGIT ZERO … ONE
    "seg-000001.jsonl\n",
]

pytestmark = pytest.mark.timeout(300)


def child_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(FAILCORE_HOME=str(home), PYTHONPATH=str(REPO), COLUMNS="300")
    return env


def failcore(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "failcore.cli", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=child_env(home),
        cwd=REPO,
        check=False,
        preexec_fn=lambda: os.umask(0o022),
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def record(home: Path, tape: Path, code: str = "pass") -> dict[str, Any]:
    """A real tape: `failcore run` of a command that makes no request (run_start, policy, run_end and a
    final signed checkpoint)."""
    result = failcore(home, "run", "--json", "--tape", str(tape), "--", sys.executable, "-c", code)
    assert result.returncode == 0, describe(result)
    return orjson.loads(result.stdout)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("guard")
    home, tape = root / "home", root / "tape"
    run = record(home, tape)["run"]
    verified = failcore(home, "verify", str(tape))
    assert verified.returncode == 0, describe(verified)
    return home, tape, run


@pytest.fixture
def tape(recorded: tuple[Path, Path, str], tmp_path: Path) -> Path:
    """A copy of the recorded tape to tamper with."""
    copy = tmp_path / "tape"
    shutil.copytree(recorded[1], copy)
    return copy


def forged_lines(run: str) -> bytes:
    """Lines that chain and hash like failcore's own, of a run that never happened."""
    events = [
        {"kind": "run_start", "v": 2, "run": run, "ts_start": 1.0e9, "detail": {"policy": "forged"}},
        {
            "kind": "network",
            "v": 2,
            "run": run,
            "ts_start": 1.0e9 + 1,
            "target": {"host": "forged.example", "port": 443},
            "decision": "ALLOW",
            "outcome": "ok",
        },
    ]
    out, prev = b"", GENESIS_PREV
    for seq, event in enumerate(events, 1):
        line, prev = encode_line(prev, seq, orjson.dumps(event))
        out += line
    return out


def lines_of(segment: Path) -> list[bytes]:
    return segment.read_bytes().splitlines(keepends=True)


def replace_line(segment: Path, number: int, new: bytes) -> None:
    lines = lines_of(segment)
    lines[number - 1] = new
    segment.write_bytes(b"".join(lines))


# ------------------------------------------------------------------------ segment names


@pytest.mark.parametrize("name", OTHER_SPELLINGS, ids=["more-digits", "arabic-indic", "fullwidth", "newline"])
def test_a_segment_under_another_spelling_is_shown_nowhere_and_breaks_verify(
    recorded: tuple[Path, Path, str], tape: Path, name: str
) -> None:
    home, _, run = recorded
    (tape / name).write_bytes(forged_lines("run-forged"))

    verified = failcore(home, "verify", str(tape))
    assert verified.returncode == 1, describe(verified)
    assert "BROKEN" in verified.stdout and repr(name) in verified.stdout, describe(verified)
    report = orjson.loads(failcore(home, "verify", str(tape), "--json").stdout)
    assert report["status"] == "broken"
    assert report["first_break"]["segment"] == name
    assert report["first_break"]["kind"] == "stray_file"

    listed = failcore(home, "list", "--tape", str(tape), "--json")
    assert listed.returncode == 0, describe(listed)
    assert [r["run"] for r in orjson.loads(listed.stdout)] == [run]
    shown = failcore(home, "show", "--last", "--tape", str(tape), "--json")
    assert shown.returncode == 0, describe(shown)
    assert {e["run"] for e in orjson.loads(shown.stdout)} == {run}
    forged = failcore(home, "show", "run-forged", "--tape", str(tape), "--json")
    assert forged.returncode == 2 and "no run 'run-forged'" in forged.stderr, describe(forged)
    tailed = failcore(home, "tail", "--tape", str(tape), "--json")
    assert tailed.returncode == 0, describe(tailed)
    assert b"forged" not in tailed.stdout.encode()
    html = tape.parent / "report.html"
    reported = failcore(home, "report", "--last", "--tape", str(tape), "-o", str(html))
    assert reported.returncode == 1 and "BROKEN" in reported.stderr, describe(reported)


def test_a_copy_under_unicode_digits_cannot_vouch_for_an_edited_segment(
    recorded: tuple[Path, Path, str], tape: Path
) -> None:
    """The intact copy sorted after the real segment, and verify used to check it instead."""
    home = recorded[0]
    shutil.copy(tape / SEGMENT, tape / OTHER_SPELLINGS[1])
    line = edited(tape)
    verified = failcore(home, "verify", str(tape), "--json")
    assert verified.returncode == 1, describe(verified)
    assert orjson.loads(verified.stdout)["first_break"]["segment"] == SEGMENT
    shown = failcore(home, "show", "--last", "--tape", str(tape), "--json")
    assert shown.returncode == 1 and f"{SEGMENT} line {line}:" in shown.stderr, describe(shown)
    assert len(orjson.loads(shown.stdout)) == 3  # the copy is not read


def test_a_directory_under_a_segment_name_breaks_verify(recorded: tuple[Path, Path, str], tape: Path) -> None:
    home = recorded[0]
    (tape / "seg-000002.jsonl").mkdir()
    report = failcore(home, "verify", str(tape), "--json")
    assert report.returncode == 1, describe(report)
    assert orjson.loads(report.stdout)["first_break"]["segment"] == "seg-000002.jsonl"
    assert "Traceback" not in report.stderr


def test_files_failcore_did_not_write_are_named_by_verify(
    recorded: tuple[Path, Path, str], tape: Path
) -> None:
    home = recorded[0]
    (tape / "notes.txt").write_text("mine")
    shutil.copy(tape / "signing-key.pub", tape / "signing-key-mine.pub")  # not a name the writer gives
    verified = failcore(home, "verify", str(tape))
    assert verified.returncode == 0, describe(verified)  # nothing reads them: the tape is still whole
    assert "'notes.txt'" in verified.stdout and "'signing-key-mine.pub'" in verified.stdout, describe(
        verified
    )
    report = orjson.loads(failcore(home, "verify", str(tape), "--json").stdout)
    assert report["unexpected_files"] == ["notes.txt", "signing-key-mine.pub"]


# ------------------------------------------------------------------------ broken lines


def edited(tape: Path) -> int:
    """Line 3 (run_end) says 7 requests instead of 0: still JSON, its hash no longer matches."""
    segment = tape / SEGMENT
    line = lines_of(segment)[2]
    assert b'"requests":0,' in line
    replace_line(segment, 3, line.replace(b'"requests":0,', b'"requests":7,', 1))
    return 3


def cut_short(tape: Path) -> int:
    """Line 2 (policy) loses its end but keeps its newline: not JSON any more."""
    segment = tape / SEGMENT
    line = lines_of(segment)[1]
    replace_line(segment, 2, line[: len(line) // 2] + b"\n")
    return 2


@pytest.mark.parametrize("damage", [edited, cut_short], ids=["edited", "cut-short"])
@pytest.mark.parametrize(
    "command",
    [("list", "--json"), ("list",), ("show", "--last", "--json"), ("show", "--last"), ("tail", "--json")],
    ids=["list-json", "list", "show-json", "show", "tail-json"],
)
def test_a_broken_line_is_named_and_the_exit_status_says_so(
    recorded: tuple[Path, Path, str], tape: Path, damage: Any, command: tuple[str, ...]
) -> None:
    home, _, run = recorded
    line = damage(tape)
    result = failcore(home, *command, "--tape", str(tape))
    assert result.returncode == 1, describe(result)
    assert f"{SEGMENT} line {line}:" in result.stderr, describe(result)
    assert "Traceback" not in result.stderr
    warnings = [w for w in result.stderr.splitlines() if "warning:" in w]
    assert len(warnings) == 1, describe(result)  # one line, once
    assert "not as failcore wrote them" in result.stderr
    assert run in result.stdout  # what the tape holds is still shown
    if "--json" in command:
        docs = result.stdout.splitlines() if command[0] == "tail" else [result.stdout]
        assert all(orjson.loads(doc) for doc in docs)  # stdout stays pure JSON (JSON lines for tail)
    if damage is edited and command[0] == "show" and "--json" in command:
        (run_end,) = [e for e in orjson.loads(result.stdout) if e["kind"] == "run_end"]
        assert run_end["detail"]["requests"] == 7  # shown as it is now, and flagged above


def test_diff_names_a_broken_line_it_compared_and_does_not_say_same(
    recorded: tuple[Path, Path, str], tape: Path
) -> None:
    home, _, run = recorded
    intact = failcore(home, "diff", run, run, "--tape", str(tape))
    assert intact.returncode == 0 and "warning" not in intact.stderr, describe(intact)
    segment = tape / SEGMENT
    start = orjson.loads(lines_of(segment)[0])
    assert start["kind"] == "run_start"
    start["detail"]["forged"] = True  # still JSON, its hash no longer matches
    replace_line(segment, 1, orjson.dumps(start) + b"\n")
    result = failcore(home, "diff", run, run, "--tape", str(tape))
    assert result.returncode == 1, describe(result)
    assert f"{SEGMENT} line 1:" in result.stderr and "not as failcore wrote them" in result.stderr
    assert "Traceback" not in result.stderr
    assert "same shape" in result.stdout  # the comparison is still shown


def test_a_warm_list_names_the_broken_line_again(recorded: tuple[Path, Path, str], tape: Path) -> None:
    home = recorded[0]
    line = edited(tape)
    for _ in range(2):  # cold, then from the cache
        result = failcore(home, "list", "--tape", str(tape), "--json")
        assert result.returncode == 1 and f"{SEGMENT} line {line}:" in result.stderr, describe(result)


def test_list_names_a_broken_line_of_a_segment_the_viewer_indexed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from failcore.tui.cache import prepare_cache_dir
    from failcore.tui.index import build_index

    home, tape = tmp_path / "home", tmp_path / "tape"
    record(home, tape)
    record(home, tape)  # each run opens a segment: seg-000001.jsonl is sealed
    line = edited(tape)
    monkeypatch.setenv("FAILCORE_HOME", str(home))
    cache = prepare_cache_dir(tape)
    build_index(tape, cache)  # what `failcore view` leaves; list counts sealed segments from it
    assert (cache / f"{SEGMENT}.idx").is_file()
    for _ in range(2):  # from the viewer's index, then from list's own entry
        result = failcore(home, "list", "--tape", str(tape), "--json")
        assert result.returncode == 1 and f"{SEGMENT} line {line}:" in result.stderr, describe(result)
        assert len(orjson.loads(result.stdout)) == 2


def test_show_of_one_event_names_a_broken_line_it_read(recorded: tuple[Path, Path, str], tape: Path) -> None:
    home = recorded[0]
    line = edited(tape)
    result = failcore(home, "show", "--event", "3", "--tape", str(tape), "--json")
    assert result.returncode == 1, describe(result)
    assert orjson.loads(result.stdout)["seq"] == 3
    assert f"{SEGMENT} line {line}:" in result.stderr, describe(result)


def test_report_on_a_broken_tape_writes_the_report_and_exits_1(
    recorded: tuple[Path, Path, str], tape: Path
) -> None:
    home = recorded[0]
    edited(tape)
    html = tape.parent / "report.html"
    result = failcore(home, "report", "--last", "--tape", str(tape), "-o", str(html))
    assert result.returncode == 1, describe(result)
    assert "tape chain BROKEN" in result.stdout
    assert f"BROKEN (first break: {SEGMENT} line 3:" in result.stderr, describe(result)
    assert "BROKEN at" in html.read_text()
    as_json = failcore(home, "report", "--last", "--tape", str(tape), "-o", str(html), "--json")
    assert as_json.returncode == 1 and orjson.loads(as_json.stdout)["chain"] == "BROKEN", describe(as_json)
    intact = failcore(home, "report", "--last", "--tape", str(recorded[1]), "-o", str(html))
    assert intact.returncode == 0, describe(intact)


def test_tail_follow_warns_about_a_broken_line_and_goes_on(
    recorded: tuple[Path, Path, str], tape: Path
) -> None:
    home, _, run = recorded
    segment = tape / SEGMENT
    prev = line_hash(lines_of(segment)[-1].rstrip(b"\n"))
    seq = len(lines_of(segment))

    def append(event: dict[str, Any], *, tamper: bool = False) -> int:
        nonlocal prev, seq
        seq += 1
        line, prev = encode_line(prev, seq, orjson.dumps(event))
        if tamper:
            line = line.replace(b'"note":"a"', b'"note":"b"')
        with open(segment, "ab") as f:
            f.write(line)
        return seq

    process = subprocess.Popen(
        [sys.executable, "-m", "failcore.cli", "tail", "-f", "--json", "--tape", str(tape)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(home),
        cwd=REPO,
    )
    assert process.stdout is not None and process.stderr is not None
    shown: queue.Queue[dict[str, Any]] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [shown.put(orjson.loads(x)) for x in process.stdout or ()], daemon=True
    )
    reader.start()
    try:
        for _ in range(4):  # the tape's four lines, then -f starts following
            assert shown.get(timeout=TIMEOUT)["run"] == run
        # -f reads from where the tape ended when it started following: probe until a line shows.
        deadline = time.monotonic() + 60
        while shown.empty():
            assert time.monotonic() < deadline, "tail -f never showed an appended line"
            append({"kind": "probe", "run": run, "note": "a"})
            time.sleep(0.5)
        bad = append({"kind": "probe", "run": run, "note": "a"}, tamper=True)
        good = append({"kind": "probe", "run": run, "note": "after"})
        seen = []
        while good not in seen:
            seen.append(shown.get(timeout=TIMEOUT)["seq"])
        assert bad in seen  # shown as it is now
        assert process.poll() is None, "tail -f went on"
        process.send_signal(signal.SIGINT)
        assert process.wait(TIMEOUT) == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read()
    assert f"{SEGMENT} line {bad}: edited" in stderr, stderr
    assert "Traceback" not in stderr, stderr


# The agent `failcore run` starts runs as the same user: it can edit its own run's lines on the tape.
AGENT_EDITS_ITS_RUN = """
import os, pathlib, time
segment = pathlib.Path(os.environ["FAILCORE_TAPE"]) / "seg-000001.jsonl"
while not segment.exists() or b'"kind":"policy"' not in segment.read_bytes():
    time.sleep(0.05)
data = segment.read_bytes()
fd = os.open(segment, os.O_WRONLY)
os.pwrite(fd, b'"v":3', data.index(b'"v":2'))  # in line 1, run_start; the writer's appends go on
os.close(fd)
"""


def test_run_names_a_line_of_its_run_edited_while_it_ran(tmp_path: Path) -> None:
    home, tape = tmp_path / "home", tmp_path / "tape"
    result = failcore(
        home, "run", "--json", "--tape", str(tape), "--", sys.executable, "-c", AGENT_EDITS_ITS_RUN
    )
    assert result.returncode == 0, describe(result)  # the command's own exit code, as always
    assert f"{SEGMENT} line 1: edited" in result.stderr, describe(result)
    summary = orjson.loads(result.stdout)
    assert any("not as failcore wrote them" in w for w in summary["warnings"]), summary


def test_proxy_summary_names_a_line_of_its_run_edited_while_it_ran(tmp_path: Path) -> None:
    home, tape = tmp_path / "home", tmp_path / "tape"
    proxy = subprocess.Popen(
        [sys.executable, "-m", "failcore.cli", "proxy", "--port", "0", "--tape", str(tape)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(home),
        cwd=REPO,
    )
    assert proxy.stdout is not None
    try:
        for line in proxy.stdout:
            if line.startswith("Ctrl-C stops"):
                break
        segment = tape / SEGMENT
        deadline = time.monotonic() + 60
        while not segment.exists() or b'"kind":"policy"' not in segment.read_bytes():
            assert time.monotonic() < deadline, "the proxy wrote no run_start"
            time.sleep(0.05)
        data = segment.read_bytes()
        fd = os.open(segment, os.O_WRONLY)
        os.pwrite(fd, b'"v":3', data.index(b'"v":2'))  # line 1, run_start
        os.close(fd)
    finally:
        proxy.send_signal(signal.SIGINT)
        _, err = proxy.communicate(timeout=60)
    assert proxy.returncode == 0, err  # the proxy's own exit status
    assert f"{SEGMENT} line 1: edited" in err and "not as failcore wrote them" in err, err
    assert "Traceback" not in err


# ------------------------------------------------------------------------ directory modes


def test_directories_failcore_creates_are_private(recorded: tuple[Path, Path, str], tmp_path: Path) -> None:
    home = tmp_path / "new" / "home"  # neither exists yet
    listed = failcore(home, "list", "--tape", str(recorded[1]))
    assert listed.returncode == 0, describe(listed)
    cache_root = home / "view-index"
    (cache,) = cache_root.iterdir()
    for directory in (tmp_path / "new", home, cache_root, cache):
        assert directory.stat().st_mode & 0o777 == 0o700, directory

    tape = tmp_path / "deep" / "er" / "tape"
    record(tmp_path / "home2", tape)
    for directory in (tmp_path / "deep", tmp_path / "deep" / "er", tape, tmp_path / "home2"):
        assert directory.stat().st_mode & 0o777 == 0o700, directory
    assert (tmp_path / "home2" / "failcore-signing.key").stat().st_mode & 0o777 == 0o600
    assert (tape / SEGMENT).stat().st_mode & 0o777 == 0o600
