"""CPU per MiB of a DLP scan (`DlpEngine.scan`, hyperscan, built-in rules) of bodies full of base64:
an LLM vision call (~1 MiB JSON of PNG data URLs), base64 of text, many short junk runs (the worst case
for per-run work), and a plain chat body for reference.

Two trees, interleaved (a round scans each body in one tree's process, then in the other's):
  PYTHONPATH=. .venv/bin/python benchmarks/dlp_decode_bench.py --before /tmp/x_before --rounds 7
One tree only (what a round runs): ... dlp_decode_bench.py --once
Figures: milliseconds of process CPU time (`time.process_time`) per MiB, median of the rounds (each
round's figure the median of REPEAT scans), with the range.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

REPEAT = 5


def _png(width: int, height: int, seed: int) -> bytes:
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def bodies() -> dict[str, bytes]:
    rng = random.Random(1)
    words = [
        "the",
        "model",
        "should",
        "read",
        "the",
        "configuration",
        "file",
        "and",
        "summarise",
        "what",
        "the",
        "service",
        "does",
    ]
    text = " ".join(rng.choice(words) for _ in range(180_000))[: 1 << 20]
    content: list[dict[str, object]] = [{"type": "text", "text": "What is in these pictures?"}]
    for seed in range(4):
        url = "data:image/png;base64," + base64.b64encode(_png(600, 140, seed)).decode()
        content.append({"type": "image_url", "image_url": {"url": url}})
    vision = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}
    junk = ["Z" * 23 + "9" + f"{i:06d}" for i in range((1 << 20) // 34)]
    return {
        "vision 4 PNGs": json.dumps(vision).encode(),
        "base64 of text": json.dumps({"d": base64.b64encode(text[:760_000].encode()).decode()}).encode(),
        "short junk runs": json.dumps({"x": junk}).encode(),
        "chat text": json.dumps({"messages": [{"role": "user", "content": text}]}).encode(),
    }


def once() -> dict[str, float]:
    from failcore.dlp import DlpEngine, builtin_rules
    from failcore.dlp.pending import wait_until_built

    engine = DlpEngine(builtin_rules(), backend="hyperscan", salt=b"bench")
    wait_until_built(engine)
    out: dict[str, float] = {}
    for name, body in bodies().items():
        engine.scan(body)  # warm
        costs = []
        for _ in range(REPEAT):
            start = time.process_time()
            engine.scan(body)
            costs.append((time.process_time() - start) * 1000 / (len(body) / (1 << 20)))
        out[name] = statistics.median(costs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--before", type=Path)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if args.once:
        print(json.dumps(once()))
        return
    here = Path(__file__).resolve().parent.parent
    trees = {"before": args.before, "after": here}
    results: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        for label, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(tree)}
            run = subprocess.run(
                [sys.executable, str(here / "benchmarks" / "dlp_decode_bench.py"), "--once"],
                env=env,
                cwd=tree,
                capture_output=True,
                text=True,
                check=True,
            )
            results[label].append(json.loads(run.stdout.strip().splitlines()[-1]))
    sizes = {name: len(body) for name, body in bodies().items()}
    print(
        f"{'body':<18} {'MiB':>5}  {'before ms/MiB (range)':>26}  {'after ms/MiB (range)':>26}  after/before"
    )
    for name, size in sizes.items():
        cells = []
        for label in ("before", "after"):
            values = [r[name] for r in results[label]]
            cells.append((statistics.median(values), min(values), max(values)))
        (b, bl, bh), (a, al, ah) = cells
        print(
            f"{name:<18} {size / (1 << 20):5.2f}  {b:8.2f} ({bl:6.2f}-{bh:6.2f})      "
            f"{a:8.2f} ({al:6.2f}-{ah:6.2f})      {a / b:5.2f}x"
        )


if __name__ == "__main__":
    main()
