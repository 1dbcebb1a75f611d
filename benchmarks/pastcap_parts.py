"""What a streamed body past the recorded cap costs the proxy's event loop, piece by piece, in one process.

    .venv/bin/python benchmarks/pastcap_parts.py [--mib 128] [--chunk 65536] [--rounds 5] [--repo PATH]

A body of incompressible bytes (an archive, model weights) is fed chunk by chunk, as mitmproxy hands a
stream to failcore, through:
  tap            BodyTap alone (the capped copy, size and sha256 every streamed body gets; no DLP)
  tap + handoff  BodyTap and PastCapScan, its batches handed to a stand-in that answers at once
                 (the batching and the copies, without a scan process)
  tap + process  BodyTap and PastCapScan with the real past-cap scan process
                 (failcore.evidence.pastcapworker) scanning every batch
Reported per MiB: the feeding thread's CPU (the event loop's share), this process's CPU (the loop plus
the reply reader and, when the child fell behind, the in-process scan thread) and the scan process's,
with the scan process's system share and minor page faults apart (fresh 1 MiB buffers fault their pages).
The feed is paced (a short sleep per MiB, as a network transfer is) so the child keeps up; a round
whose body was not scanned whole fails. Medians over the rounds (min-max), variants interleaved.
bulk_bench.py measures the same through the real proxy, where the machine's load adds its noise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

MIB = 1 << 20
PACE = 0.004  # seconds of sleep per MiB fed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=65_536)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)
    # (an editable install's import hook would load the installed checkout's failcore)
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in f.__module__.lower()]
    sys.path.insert(0, str(args.repo.resolve()))
    import failcore.evidence.pastcapworker as worker
    from failcore.dlp.scanner import DlpScanner
    from failcore.evidence.pastcap import PastCapScan
    from failcore.policy.load import load_policy
    from failcore.proxy.session import BodyTap
    from failcore.shipped import default_policy_path

    salt = b"pastcap-parts-salt-of-32-bytes!!"
    policy = load_policy(default_policy_path())
    scanner = DlpScanner.for_policy(policy, salt)
    origin = worker.origin_for(policy, salt)
    assert scanner is not None and origin is not None
    deadline = time.monotonic() + 120
    while worker.scan_process(origin) is None:
        assert time.monotonic() < deadline, "the past-cap scan process never became ready"
        time.sleep(0.05)
    block = hashlib.shake_256(b"pastcap-parts").digest(MIB)
    chunks = [block[i : i + args.chunk] for i in range(0, MIB, args.chunk)]
    real_scan_process = worker.scan_process

    class Answers:
        """A scan process that takes every batch and answers at once with no hits."""

        def submit(self, scan: Any, head: bytes, body: Any, base: int) -> bool:
            scan.record([], base, None)
            return True

    answers = Answers()

    def child_stat() -> tuple[float, float, int]:
        """The scan process's user + system CPU seconds, its system seconds, its minor faults."""
        current = worker._manager.current
        if current is None:
            return 0.0, 0.0, 0
        fields = Path(f"/proc/{current.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks, int(fields[12]) / ticks, int(fields[7])

    def one(variant: str) -> dict[str, float]:
        worker.scan_process = (lambda origin: answers) if variant == "tap + handoff" else real_scan_process
        thread0, process0, child0 = time.thread_time(), time.process_time(), child_stat()
        tap = BodyTap(MIB)
        scan = None
        if variant != "tap":
            scan = PastCapScan(scanner.engine, MIB, "request.body", origin=origin)
            tap.observers.append(scan)
        for _ in range(args.mib):
            for chunk in chunks:
                tap(chunk)
            time.sleep(PACE)
        thread = time.thread_time() - thread0
        if scan is not None:
            _, coverage = scan.results(60)
            if not coverage["complete"]:
                raise SystemExit(f"{variant}: not scanned whole: {coverage['note']}")
        time.sleep(0.3)  # (the child's last replies)
        child1 = child_stat()
        return {
            "loop thread": thread * 1000 / args.mib,
            "process": (time.process_time() - process0) * 1000 / args.mib,
            "scan process": (child1[0] - child0[0]) * 1000 / args.mib,
            "scan process system": (child1[1] - child0[1]) * 1000 / args.mib,
            "scan process faults": (child1[2] - child0[2]) / args.mib,
        }

    variants = ["tap", "tap + handoff", "tap + process"]
    samples: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    for round_ in range(args.rounds + 1):  # the first round warms up
        for variant in variants if round_ % 2 == 0 else variants[::-1]:
            result = one(variant)
            if round_:
                for key, value in result.items():
                    samples[variant].setdefault(key, []).append(value)
    worker.scan_process = real_scan_process
    worker.close()
    print(f"{args.mib} MiB in {args.chunk}-byte chunks, {args.rounds} rounds; CPU ms / MiB, median (min-max)")
    keys = ["loop thread", "process", "scan process", "scan process system", "scan process faults"]
    print("| variant | " + " | ".join(keys) + " (per MiB) |")
    print("|---" * (len(keys) + 1) + "|")
    for variant, metrics in samples.items():
        cells = [f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})" for v in map(metrics.get, keys)]
        print(f"| {variant} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
