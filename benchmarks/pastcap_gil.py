"""How long the DLP pass of a past-cap exchange holds the proxy's GIL: in-process vs the evidence worker.

    .venv/bin/python benchmarks/pastcap_gil.py [--rounds 7] [--repo PATH]

The event is what the proxy builds for a 128 MiB binary upload: its recorded 1 MiB (base64 on the
tape), a past-cap scan's results. A thread runs its DLP pass the way the tape writer would, either
itself (`DeferredScan()`, the in-process path) or by handing it to the DLP evidence worker child
(`ScanOffload`); meanwhile the main thread, standing in for the event loop, sleeps 1 ms at a time and
records how late it wakes (a baseline thread that only sleeps shows the machine's own lateness).
Reported per round: the pass thread's CPU (this process only) and the main thread's largest and summed
lateness (time it could not run). Medians over the rounds, interleaved. `--repo`: a checkout to import
failcore from (it needs this branch's DeferredScan with past-cap findings).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

MIB = 1 << 20
TICK = 0.001


def _body() -> bytes:
    out = bytearray()
    seed = b"failcore bulk bench"
    while len(out) < MIB:
        seed = hashlib.sha256(seed).digest()
        out += hashlib.shake_256(seed).digest(65536)
    return bytes(out[:MIB])


def _probe(work: Callable[[], object]) -> tuple[float, float, float]:
    """(the work's thread CPU ms, the main thread's largest lateness ms, its summed lateness ms)."""
    done = threading.Event()
    cpu = [0.0]

    def run() -> None:
        started = time.thread_time()
        work()
        cpu[0] = time.thread_time() - started
        done.set()

    worst = total = 0.0
    thread = threading.Thread(target=run)
    thread.start()
    while not done.is_set():
        before = time.perf_counter()
        time.sleep(TICK)
        late = max(0.0, time.perf_counter() - before - TICK)
        worst, total = max(worst, late), total + late
    thread.join()
    return cpu[0] * 1000, worst * 1000, total * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.repo.resolve()))
    from failcore.dlp.pending import wait_until_built
    from failcore.dlp.rules import policy_rules
    from failcore.dlp.scanner import DlpScanner
    from failcore.evidence.body import body_evidence
    from failcore.evidence.pastcap import PastCapScan
    from failcore.evidence.scanworker import DeferredScan, ScanOffload, ScanOrigin, rules_sha256
    from failcore.policy.load import load_policy
    from failcore.shipped import default_policy_path

    salt = b"0123456789abcdef"
    path = default_policy_path()
    policy = load_policy(path)
    scanner = DlpScanner.for_policy(policy, salt)
    assert scanner is not None
    wait_until_built(scanner.engine)
    origin = ScanOrigin(str(path), policy.sha256, policy.mode, salt, rules_sha256(policy_rules(policy)))
    body = _body()
    scan = PastCapScan(scanner.engine, MIB, "request.body")
    for _ in range(3):  # the first 3 MiB of the upload: the recorded part and 2 MiB past it
        scan(body)
    findings = scan.findings()
    event = {
        "kind": "network",
        "v": 1,
        "run": "bench",
        "target": {"host": "127.0.0.1", "port": 443, "scheme": "https"},
        "method": "POST",
        "path": "/upload",
        "summary": "POST /upload",
        "request": {
            "http_version": "HTTP/1.1",
            "headers": [["content-type", "application/octet-stream"]],
            "body": body_evidence(
                body,
                complete=False,
                wire_size=128 * MIB,
                content_encoding=None,
                content_type="application/octet-stream",
                cap=MIB,
            ),
        },
        "response": {"http_version": "HTTP/1.1", "headers": [], "body": {"text": "134217728"}},
        "warnings": [],
    }
    offload = ScanOffload("bench")
    deadline = time.monotonic() + 120
    while isinstance(offload([DeferredScan(copy.deepcopy(event), scanner, origin)])[0], DeferredScan):
        if time.monotonic() > deadline:
            raise SystemExit("the DLP evidence worker did not start")
        time.sleep(0.1)
    variants: dict[str, Callable[[], object]] = {
        "baseline: the thread sleeps 50 ms (holds no GIL)": lambda: time.sleep(0.05),
        "in-process (DeferredScan called by the writer)": lambda: DeferredScan(
            copy.deepcopy(event), scanner, origin, (findings,)
        )(),
        "evidence worker (ScanOffload)": lambda: offload(
            [DeferredScan(copy.deepcopy(event), scanner, origin, (findings,))]
        ),
    }
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, work in variants.items():
            samples[name].append(_probe(work))
    offload.close()
    print(
        "| DLP pass of a past-cap exchange (1 MiB recorded, binary) | pass thread CPU ms "
        "| loop stand-in: largest lateness ms | summed lateness ms |"
    )
    print("|---|---|---|---|")
    for name, rows in samples.items():
        cols = [statistics.median(row[i] for row in rows) for i in range(3)]
        print(f"| {name} | {cols[0]:.1f} | {cols[1]:.1f} | {cols[2]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
