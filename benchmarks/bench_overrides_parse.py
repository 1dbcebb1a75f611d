"""The event-loop call PolicyGate makes to read a JSON POST body's `_method` overrides (a policy rule
names a method): failcore.proxy.overrides.json_override_methods on recorded prompts written by Python's
json (`\\u` escapes, so the cheap substring test cannot rule the key out), 1 and 7 MiB, with and without
a top-level `_method`. Wall ms of the call, this tree and another (`before`) interleaved, medians of 5.
(It runs on the loop; a worker thread would not shorten the stall: the C parser holds the GIL throughout.)

`python benchmarks/bench_overrides_parse.py /tmp/NAME_before` (a `git archive main` of the other tree)."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parents[1]


def _load(tree: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, tree / "failcore/proxy/overrides.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    sys.path.insert(0, str(HERE))
    from tests.llm_replay import load_exchanges

    trees = {"before": _load(Path(sys.argv[1]), "before_overrides"), "after": _load(HERE, "after_overrides")}
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?")
    print(f"CPU {model}, {os.cpu_count()} cores, load average {os.getloadavg()}")
    prompts = [json.loads(e["request_body"]) for e in load_exchanges() if e["request_body"]]
    for size in (1 << 20, 7 << 20):
        for method in (None, "PATCH"):
            doc: dict = {"batch": prompts * (size // len(json.dumps(prompts)) + 1)}
            if method:
                doc["_method"] = method
            body = json.dumps(doc).encode()
            runs: dict[str, list[float]] = {name: [] for name in trees}
            for _ in range(5):
                for name, module in trees.items():
                    started = time.perf_counter()
                    module.json_override_methods(body)
                    runs[name].append((time.perf_counter() - started) * 1e3)
            before, after = statistics.median(runs["before"]), statistics.median(runs["after"])
            label = f"{len(body) >> 20} MiB, {'a' if method else 'no'} _method"
            print(
                f"{label:20} loop call before {before:6.1f} ms, after {after:6.1f} ms (x{before / after:.1f})"
            )
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
