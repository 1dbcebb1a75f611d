"""What the tape writer's thread does per exchange, part by part, and what moving it to another process
would still leave in the proxy.

    .venv/bin/python benchmarks/writer_parts.py [--exchanges 5000] [--rounds 5]

No proxy and no network: evidence_bench's exchange (the throughput benchmark's 1 KB JSON POST and 1 KB
JSON answer with an Authorization header), snapshotted from a mitmproxy test flow, default policy, the
DLP evidence scan in the worker process as the proxy runs it. Each part runs alone over `--exchanges`
exchanges (thread CPU time: time.thread_time), rounds interleaved, medians (min–max):

- build: `build_exchange_event` (the event dict from the snapshot, DLP deferred to the worker);
- offload: `ScanOffload` in batches of 64 as the writer hands them over (frames out, hits back);
- serialise: `serialise_event` (orjson);
- check (a worker's line): `SerialisedEvent.checked`, what the writer does with a line the worker built
  and sent back serialised (instead of `serialise`);
- chain: `encode_line` (the line with `prev`, `seq` and its sha256);
- write: appending the lines to a file, 64 a write (the writer's batches), page cache only.

`hand-off floor` is the least a separate process costs the proxy instead: the snapshot in the wire form
the DLP evidence worker builds a plain exchange's event from (failcore.evidence.remotebuild:
`snapshot_to_wire`, one orjson frame), written to a pipe that a reader thread drains (what crossing a
process boundary costs before anything is built there). No pickle.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from benchmarks.evidence_bench import _snapshot, evidence_settings, ready_offload
from benchmarks.report import machine_info
from failcore.evidence.exchange import ExchangeSnapshot, build_exchange_event
from failcore.evidence.remotebuild import snapshot_to_wire
from failcore.tape.serialised import SerialisedEvent
from failcore.tape.writer import encode_line, serialise_event

BATCH = 64


def hand_off_frame(snap: ExchangeSnapshot) -> bytes:
    """The snapshot as the proxy hands it to the DLP evidence worker to build its event
    (failcore.evidence.remotebuild), length-prefixed as on the pipe."""
    data = orjson.dumps(snapshot_to_wire(snap))
    return len(data).to_bytes(4, "big") + data


def _timed(work: Callable[[], None]) -> float:
    started = time.thread_time()
    work()
    return time.thread_time() - started


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    n = args.exchanges
    base, origin = evidence_settings()
    cfg = dataclasses.replace(base, scan_origin=origin)
    snap = _snapshot()
    offload = ready_offload(snap, cfg)
    events = [build_exchange_event(snap, cfg) for _ in range(n)]
    resolved = [item() if callable(item) else item for item in offload(events)]
    bodies = [serialise_event(event) for event in resolved]
    lines = [encode_line(b"0" * 64, i, body)[0] for i, body in enumerate(bodies)]
    read_fd, write_fd = os.pipe()
    drained = threading.Thread(target=lambda: [None for _ in iter(lambda: os.read(read_fd, 1 << 20), b"")])
    drained.start()

    def build() -> None:
        for _ in range(n):
            build_exchange_event(snap, cfg)

    def offloaded() -> None:
        for start in range(0, n, BATCH):
            for item in offload(events[start : start + BATCH]):
                if callable(item):
                    item()

    def serialise() -> None:
        for event in resolved:
            serialise_event(event)

    def check() -> None:
        for body in bodies:
            SerialisedEvent.checked(body)

    def chain() -> None:
        prev = b"0" * 64
        for i, body in enumerate(bodies):
            prev = encode_line(prev, i, body)[1]

    def write(directory: str) -> Callable[[], None]:
        def run() -> None:
            fd = os.open(os.path.join(directory, "seg"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                for start in range(0, n, BATCH):
                    os.write(fd, b"".join(lines[start : start + BATCH]))
            finally:
                os.close(fd)

        return run

    def hand_off() -> None:
        for _ in range(0, n, BATCH):
            os.write(write_fd, b"".join(hand_off_frame(snap) for _ in range(BATCH)))

    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        parts = {
            "build": build,
            "offload": offloaded,
            "serialise": serialise,
            "check (a worker's line)": check,
            "chain": chain,
            "write": write(directory),
            "hand-off floor": hand_off,
        }
        for _ in range(args.rounds):
            for name, work in parts.items():
                results.setdefault(name, []).append(_timed(work) / n * 1e6)
    os.close(write_fd)
    drained.join()
    os.close(read_fd)
    offload.close()
    info = dict(machine_info())
    load = f"{info.get('load average at start')} → {os.getloadavg()[0]:.2f}"
    print(f"CPU: {info.get('CPU')}, {info.get('cores (online)')} cores, load {load}")
    sizes = f"frame {len(hand_off_frame(snap))} B, tape line {len(lines[0])} B"
    print(f"{n} exchanges × {args.rounds} rounds; {sizes}")
    print("| part | thread CPU µs/exchange |")
    print("|---|---|")
    writer_total = 0.0
    for name, values in results.items():
        median = statistics.median(values)
        if name not in ("hand-off floor", "check (a worker's line)"):
            writer_total += median
        print(f"| {name} | {median:,.1f} ({min(values):,.1f}–{max(values):,.1f}) |")
    print(f"| sum of the writer's parts | {writer_total:,.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
