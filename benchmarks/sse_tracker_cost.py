"""Per-event cost of metering a streamed LLM answer: the SSE/NDJSON decoder (failcore.framing) and the
usage tracker's provider accumulator (failcore.llm), alone, over every recorded 200 stream.

    .venv/bin/python benchmarks/sse_tracker_cost.py [--rounds 7] [--repo /tmp/before --repo .]

The streams are the recorded SSE/NDJSON answers of tests/data/conformance/llm/openllmetry-cassettes.jsonl,
fed to `SseUsageTracker` (content kept, as the meter keeps it) at event boundaries (as the providers
send them), then `streamed_call` (what the meter asks at the end). Reported: microseconds of CPU per
event (per `data:` payload), the best of the rounds, per API. With several --repo checkouts, each round
runs every checkout in its own child process, interleaved; ratios are new/old.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent))
CASSETTES = HERE.parent / "tests" / "data" / "conformance" / "llm" / "openllmetry-cassettes.jsonl"


def _streams() -> list[tuple[tuple[str, str], str, list[bytes], int]]:
    from failcore.llm import detect_api

    out = []
    for line in CASSETTES.read_text(encoding="utf-8").splitlines():
        exchange = json.loads(line)
        media = (exchange["response_headers"].get("content-type") or "").lower()
        if exchange["status"] != 200 or not ("event-stream" in media or "ndjson" in media):
            continue
        request = json.loads(exchange["request_body"]) if exchange.get("request_body") else None
        detected = detect_api(
            exchange["host"], exchange["path"], request if isinstance(request, dict) else None
        )
        if detected is None:
            continue
        body = exchange["response_body"].encode()
        sep = b"\n\n" if "event-stream" in media else b"\n"
        pieces = [p + sep for p in body.split(sep)]
        pieces[-1] = pieces[-1][: -len(sep)]
        events = body.count(b"data:") if sep == b"\n\n" else body.count(b"\n") + 1
        out.append((detected, media, [p for p in pieces if p], events))
    return out


def _child(rounds: int) -> dict[str, float]:
    from failcore.llm import SseUsageTracker

    streams = _streams()
    per_api: dict[str, list[tuple[tuple[str, str], str, list[bytes], int]]] = {}
    for stream in streams:
        per_api.setdefault(stream[0][1], []).append(stream)
    result = {}
    for api, group in sorted(per_api.items()):
        events = sum(s[3] for s in group)
        best = float("inf")
        for _ in range(rounds):
            start = time.process_time()
            for _ in range(20):
                for detected, media, pieces, _n in group:
                    tracker = SseUsageTracker(*detected, content_limit=1 << 20)
                    for piece in pieces:
                        tracker.feed(piece)
                    tracker.streamed_call(
                        path="/", status=200, request_json=None, content_type=media, seen=tracker.fed
                    )
            best = min(best, (time.process_time() - start) / 20 / events * 1e6)
        result[f"{api} ({len(group)} streams, {events} events)"] = best
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repo", type=Path, action="append")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.rounds)))
        return
    repos = [r.resolve() for r in (args.repo or [HERE.parent])]
    results: dict[str, dict[str, list[float]]] = {r.name: {} for r in repos}
    for _ in range(args.rounds):
        for repo in repos:
            env = dict(os.environ, PYTHONPATH=f"{repo}{os.pathsep}{HERE.parent}")
            run = subprocess.run(
                [sys.executable, __file__, "--child", "--rounds", "3"],
                env=env,
                cwd=repo,
                capture_output=True,
                text=True,
                check=True,
            )
            for key, value in json.loads(run.stdout).items():
                results[repo.name].setdefault(key, []).append(value)
    print(f"load average {os.getloadavg()}")
    names = [r.name for r in repos]
    for key in results[names[0]]:
        best = [min(results[name][key]) for name in names]
        cells = "  ".join(f"{name} {value:6.2f} us/event" for name, value in zip(names, best, strict=True))
        ratio = f"  ratio {best[-1] / best[0]:.2f}" if len(best) > 1 else ""
        print(f"{key:50s} {cells}{ratio}")


if __name__ == "__main__":
    main()
