"""CPU the proxy process spends on one exchange's evidence, in-process vs with the DLP evidence worker.

    .venv/bin/python benchmarks/evidence_bench.py [--exchanges 2000] [--rounds 3]

No proxy and no network: the exchange is the throughput benchmark's (a 1 KB JSON POST answered with a
1 KB JSON, plus an Authorization header), snapshotted from a mitmproxy test flow, with the default
policy's DLP rules. CPU time (process_time, all threads of this process) is what the proxy's critical
core would pay; the worker's own CPU is read from /proc. Rounds alternate the variants; medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mitmproxy.test import tflow

from benchmarks.harness import cpu_seconds
from benchmarks.report import machine_info
from benchmarks.servers import REQUEST_BODY_BYTES, RESPONSE_BODY_BYTES, json_document
from failcore.dlp.pending import wait_until_built
from failcore.dlp.scanner import DlpScanner
from failcore.evidence.exchange import EvidenceSettings, build_exchange_event
from failcore.evidence.pastcapworker import origin_for
from failcore.evidence.scanworker import DeferredScan, ScanOffload, ScanOrigin
from failcore.policy.load import load_policy
from failcore.proxy.snapshot import snapshot_exchange
from failcore.shipped import default_policy_path
from failcore.tape.writer import serialise_event

BATCH = 64  # about what the tape writer drains per wake-up under load


def _snapshot() -> object:
    flow = tflow.tflow(resp=True)
    flow.request.host, flow.request.port = "127.0.0.1", 8080
    flow.request.method, flow.request.path = "POST", "/v1/chat/completions"
    flow.request.headers["content-type"] = "application/json"
    flow.request.headers["authorization"] = "Bearer sk-bench-not-a-secret"
    flow.request.content = json_document(REQUEST_BODY_BYTES, "chat.completion.request").encode()
    flow.response.headers["content-type"] = "application/json"
    flow.response.content = json_document(RESPONSE_BODY_BYTES, "chat.completion").encode()
    return snapshot_exchange(flow, None, "http.request")


def evidence_settings() -> tuple[EvidenceSettings, ScanOrigin]:
    """The default policy's evidence settings (DLP scanned in-process) and the origin the DLP evidence
    worker rebuilds their scanner from, as the proxy makes them (origin_for)."""
    policy = load_policy(default_policy_path())
    salt = b"benchmark-salt-0"
    scanner = DlpScanner.for_policy(policy, salt)
    assert scanner is not None
    wait_until_built(scanner.engine)
    origin = origin_for(policy, salt)
    assert origin is not None
    return EvidenceSettings("run-bench", 64 * 1024, salt, policy.redact_headers, scanner), origin


def ready_offload(snap: object, cfg: EvidenceSettings) -> ScanOffload:
    """A ScanOffload whose worker has built its scanner (`cfg` names its origin)."""
    offload = ScanOffload("run-bench")
    while isinstance(offload([build_exchange_event(snap, cfg)])[0], DeferredScan):  # type: ignore[arg-type]
        time.sleep(0.1)  # until the worker has its scanner
    return offload


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    base, origin = evidence_settings()
    settings = {
        "no DLP": dataclasses.replace(base, dlp=None),
        "DLP in-process": base,
        "DLP in the worker": dataclasses.replace(base, scan_origin=origin),
    }
    snap = _snapshot()
    offload = ready_offload(snap, settings["DLP in the worker"])
    worker_pid = offload.worker.pid
    own: dict[str, list[float]] = {name: [] for name in settings}
    child: dict[str, list[float]] = {name: [] for name in settings}
    n = args.exchanges
    for _ in range(args.rounds):
        for name, cfg in settings.items():
            child_before = cpu_seconds(worker_pid)
            started = time.process_time()
            batch: list[object] = []
            for _ in range(n):
                batch.append(build_exchange_event(snap, cfg))  # type: ignore[arg-type]
                if len(batch) == BATCH:
                    for item in offload(batch):
                        serialise_event(item() if callable(item) else item)
                    batch = []
            for item in offload(batch):
                serialise_event(item() if callable(item) else item)
            own[name].append((time.process_time() - started) / n * 1e6)
            child[name].append((cpu_seconds(worker_pid) - child_before) / n * 1e6)
    offload.close()
    info = dict(machine_info())
    print(
        f"CPU: {info.get('CPU')}, {info.get('cores (online)')} cores, "
        f"load {info.get('load average at start')}; {n} exchanges × {args.rounds} rounds"
    )
    print("| evidence path | proxy process CPU µs/exchange | worker CPU µs/exchange |")
    print("|---|---|---|")
    for name in settings:
        o, c = own[name], child[name]
        print(
            f"| {name} | {statistics.median(o):,.0f} ({min(o):,.0f}–{max(o):,.0f}) "
            f"| {statistics.median(c):,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
