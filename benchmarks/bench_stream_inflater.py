"""CPU the stream meter spends undoing a compressed SSE answer (failcore.proxy.streamcopy.StreamInflater):
the longest recorded stream of tests/data/conformance gzip'd, fed in 60-byte chunks (a gzip flush per
event or two), in this tree and in another (`before`), interleaved. CPU ms per MB decoded.

`python benchmarks/bench_stream_inflater.py /tmp/NAME_before` (a `git archive main` of the other tree)."""

from __future__ import annotations

import gzip
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parents[1]


def _load(tree: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, tree / "failcore/proxy/streamcopy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu_ms_per_mb(module: ModuleType, chunks: list[bytes], decoded: int, rounds: int = 20) -> float:
    started = time.process_time()
    for _ in range(rounds):
        inflate = module.StreamInflater("gzip", lambda out: None)
        for chunk in chunks:
            inflate(chunk)
    return (time.process_time() - started) / rounds / (decoded / 1e6) * 1e3


def main() -> None:
    sys.path.insert(0, str(HERE))
    from tests.llm_replay import load_exchanges

    streams = [
        e for e in load_exchanges() if "event-stream" in (e["response_headers"].get("content-type") or "")
    ]
    body = max((e["response_body"] for e in streams), key=len).encode()
    wire = gzip.compress(body)
    chunks = [wire[i : i + 60] for i in range(0, len(wire), 60)]
    trees = {
        "before": _load(Path(sys.argv[1]), "before_streamcopy"),
        "after": _load(HERE, "after_streamcopy"),
    }
    runs: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(9):
        for name, module in trees.items():
            runs[name].append(_cpu_ms_per_mb(module, chunks, len(body)))
    print(f"{len(body)} bytes decoded, {len(wire)} on the wire in {len(chunks)} chunks")
    for name, values in runs.items():
        median, low, high = statistics.median(values), min(values), max(values)
        print(f"{name:6} CPU ms/MB decoded: median {median:.2f} ({low:.2f}-{high:.2f})")


if __name__ == "__main__":
    main()
