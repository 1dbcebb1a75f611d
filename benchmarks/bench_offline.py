"""Benchmarks that need no proxy: the DLP engine, the tape writer/verifier/reader and the TUI start-up."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.dlp_bench import GITLEAKS_TOML, build_chat_body
from benchmarks.harness import REPO, VENV_BIN, stats
from benchmarks.report import Section, Target
from benchmarks.servers import BenchContext, json_document
from failcore.dlp import DlpEngine, builtin_rules, import_gitleaks
from failcore.dlp.engine import resolve_backend
from failcore.dlp.regex_backend import hyperscan_available
from failcore.tape import iter_events
from failcore.tape.verify import verify_tape
from failcore.tape.writer import TapeWriter

DLP_TARGET_MBS = 100.0
VERIFY_TARGET_EPS = 200_000.0
TUI_TIMEOUT = 60.0


def run_dlp(ctx: BenchContext, rounds: int) -> Section:
    body = build_chat_body()
    backends = ["re2"] + (["hyperscan"] if hyperscan_available() else [])
    default_backend = resolve_backend("auto")
    gitleaks = import_gitleaks(GITLEAKS_TOML).rules
    rule_sets = {"built-ins": builtin_rules(), "built-ins + gitleaks": builtin_rules() + gitleaks}
    engines: dict[tuple[str, str], DlpEngine] = {}
    build_seconds: dict[tuple[str, str], float] = {}
    for backend in backends:
        for label, rules in rule_sets.items():
            started = time.perf_counter()
            engines[(backend, label)] = DlpEngine(rules, backend=backend, salt=b"bench")
            build_seconds[(backend, label)] = time.perf_counter() - started
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in engines}
    hits: dict[tuple[str, str], int] = {}
    for round_no in range(rounds):
        print(f"  dlp round {round_no + 1}/{rounds}", flush=True)
        for key, engine in engines.items():
            started = time.perf_counter()
            hits[key] = len(engine.scan(body))
            rates[key].append(len(body) / (time.perf_counter() - started) / 1e6)
    section = Section("dlp", "5. DLP engine throughput")
    section.text(
        f"`DlpEngine.scan` over a {len(body) / 1e6:.2f} MB OpenAI-style chat request "
        "(`benchmarks/dlp_bench.py` body, a few planted secrets), one scan per engine per round. "
        f"The default backend (`auto`) here is **{default_backend}**."
    )
    rows = []
    for (backend, label), samples in rates.items():
        rate = stats(samples)
        rows.append(
            [
                backend,
                label,
                str(len(rule_sets[label])),
                f"{build_seconds[(backend, label)]:.2f}",
                rate.fmt(1),
                str(hits[(backend, label)]),
            ]
        )
        if backend == default_backend:
            section.targets.append(
                Target(
                    f"DLP scan, {backend}, {label}",
                    f"≥ {DLP_TARGET_MBS:.0f} MB/s",
                    f"{rate.median:,.1f} MB/s",
                    rate.median >= DLP_TARGET_MBS,
                )
            )
    section.table(["backend", "rule set", "rules", "build s", "MB/s", "hits"], rows)
    return section


def _network_event(run: str, index: int, template: dict[str, object]) -> dict[str, object]:
    ts = 1_780_000_000.0 + index * 0.001
    return dict(template, run=run, ts_start=ts, ts_end=ts + 0.004, flow=f"bench-{index:09d}")


def _event_template() -> dict[str, object]:
    """A network event shaped like the proxy benchmarks' exchange: 1 KB JSON each way, as text."""
    request_text = json_document(1024, "chat.completion.request")
    response_text = json_document(1024, "chat.completion")
    digest = "5" * 64

    def body(text: str) -> dict[str, object]:
        return {
            "size": len(text),
            "cap": 1 << 20,
            "sha256": digest,
            "sha256_of": "decoded",
            "truncated": False,
            "text": text,
        }

    return {
        "kind": "network",
        "v": 1,
        "egress": "NETWORK",
        "action": "http.request",
        "target": {"host": "127.0.0.1", "port": 8080, "scheme": "http"},
        "method": "POST",
        "path": "/echo",
        "summary": "POST /echo",
        "decision": "ALLOW",
        "rule": "allow-bench-upstream",
        "reason": "benchmark",
        "would_block": False,
        "outcome": "ok",
        "fail_reason": None,
        "error": None,
        "status": 200,
        "latency_ms": 1.2,
        "ttfb_ms": 1.0,
        "bytes_out": 1024,
        "bytes_in": 1024,
        "request": {
            "http_version": "HTTP/1.1",
            "headers": [
                ["Host", "127.0.0.1:8080"],
                ["Content-Type", "application/json"],
                ["Content-Length", "1024"],
            ],
            "body": body(request_text),
        },
        "response": {
            "http_version": "HTTP/1.1",
            "headers": [
                ["Server", "nginx/1.22.1"],
                ["Content-Type", "application/json"],
                ["Content-Length", "1024"],
            ],
            "body": body(response_text),
        },
    }


def _write_run(tape: Path, run: str, first: int, count: int, template: dict[str, object]) -> float:
    """Events/s of one TapeWriter from first submit until everything is on disk. The producer waits when
    the queue is nearly full: submit() drops rather than blocks, and drops would flatter the number."""
    writer = TapeWriter(tape, signing_key=Ed25519PrivateKey.generate(), run_id=run, queue_size=10_000)
    writer.start()
    started = time.perf_counter()
    for index in range(first, first + count):
        while writer.queue_depth >= 9_000:
            time.sleep(0.0005)
        writer.submit(_network_event(run, index, template))
    if not writer.flush(timeout=600):
        raise RuntimeError("tape writer did not flush")
    seconds = time.perf_counter() - started
    writer.close()
    if writer.dropped:
        raise RuntimeError(f"tape writer dropped {writer.dropped} events")
    return count / seconds


def run_tape(ctx: BenchContext, rounds: int) -> Section:
    total = 200_000 if ctx.quick else 1_000_000
    per_run = total // rounds
    tape = ctx.workdir / "bench-tape"
    template = _event_template()
    runs = [f"run-bench-{index}" for index in range(rounds)]
    write_rates = []
    for index, run in enumerate(runs):
        print(f"  tape writer {index + 1}/{rounds}: {per_run:,} events", flush=True)
        write_rates.append(_write_run(tape, run, index * per_run, per_run, template))
    size = sum(path.stat().st_size for path in tape.glob("seg-*.jsonl"))
    verify_rates, verify_mbs, filter_rates, lines = [], [], [], 0
    for round_no in range(rounds):
        print(f"  tape verify + filter round {round_no + 1}/{rounds}", flush=True)
        report = verify_tape(tape)
        if not report.ok:
            raise RuntimeError(f"benchmark tape does not verify: {report.first_break}")
        lines = report.lines
        verify_rates.append(report.lines / report.seconds)
        verify_mbs.append(size / report.seconds / 1e6)
        started = time.perf_counter()
        matched = sum(1 for _ in iter_events(tape, run=runs[round_no % len(runs)]))
        filter_rates.append(lines / (time.perf_counter() - started))
        if matched < per_run:
            raise RuntimeError(f"run filter found {matched} events, expected at least {per_run}")
    section = Section("tape", "6. Tape: writer, verify, reader")
    section.text(
        f"{len(runs)} runs × {per_run:,} network events (1 KB request and response bodies as text, "
        f"{size / lines:,.0f} bytes per line on average, {size / 2**20:,.0f} MiB, signed checkpoint every "
        "1000 events) written by `TapeWriter` one run after another; `verify_tape` and "
        "`iter_events(run=…)` (one run's events out of all lines) then run once per round over the "
        "whole tape."
    )
    verify = stats(verify_rates)
    section.table(
        ["operation", "events/s", "also"],
        [
            ["TapeWriter (submit → on disk)", stats(write_rates).fmt(0), "one sample per run"],
            [f"verify_tape ({lines:,} lines)", verify.fmt(0), f"{stats(verify_mbs).fmt(0)} MB/s"],
            ["iter_events(run=…) filter", stats(filter_rates).fmt(0), "lines scanned per second"],
        ],
    )
    full = lines >= 1_000_000
    section.targets.append(
        Target(
            f"verify ({lines:,}-line tape)",
            f"≥ {VERIFY_TARGET_EPS:,.0f} events/s",
            f"{verify.median:,.0f} events/s",
            verify.median >= VERIFY_TARGET_EPS if full else None,
        )
    )
    tui = _tui_first_screen(tape, runs[0], rounds, ctx.failcore_home)
    if tui is not None:
        section.lines += tui
    shutil.rmtree(tape, ignore_errors=True)
    return section


def _tui_first_screen(tape: Path, run: str, rounds: int, home: Path) -> list[str] | None:
    """Seconds until `failcore view` shows the tape's first run id — only once the TUI exists."""
    if not (REPO / "failcore" / "tui").is_dir():
        return ["TUI: `failcore/tui` is not present; time to first screen not measured.", ""]
    cli = [str(VENV_BIN / "python"), "-m", "failcore.cli", "view"]
    helped = subprocess.run([*cli, "--help"], capture_output=True, text=True, cwd=REPO, check=False)
    if helped.returncode != 0:
        return ["TUI: `failcore view` is not available yet; time to first screen not measured.", ""]
    argv = [*cli, "--tape", str(tape)] if "--tape" in helped.stdout else [*cli, str(tape)]
    if "--no-cache" in helped.stdout:
        argv.append("--no-cache")  # cold start: the index is built from the tape every time
    timings = []
    for _ in range(rounds):
        seconds = _time_until_text(argv, run.encode(), home)
        if seconds is None:
            return [f"TUI: `{' '.join(argv)}` did not show {run} within {TUI_TIMEOUT:.0f} s.", ""]
        timings.append(seconds)
    return [
        "TUI: `failcore view` first screen, cold (`--no-cache`; until the first run id is drawn, 120×40 pty) "
        f"on the tape above: **{stats(timings).fmt(2)} s**.",
        "",
    ]


def _time_until_text(argv: list[str], needle: bytes, home: Path) -> float | None:
    started = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:  # child: become the TUI
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        os.environ.update(
            TERM="xterm-256color", COLUMNS="120", LINES="40", PYTHONPATH=str(REPO), FAILCORE_HOME=str(home)
        )
        os.chdir(REPO)
        os.execv(argv[0], argv)
    seen = b""
    try:
        while time.perf_counter() - started < TUI_TIMEOUT:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return None
            if not chunk:
                return None
            seen = (seen + chunk)[-(1 << 16) :]
            if needle in seen:
                return time.perf_counter() - started
        return None
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.close(fd)
