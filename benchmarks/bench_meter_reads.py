"""The event-loop call LlmMeter makes to read an LLM call's bodies (its request and response hooks, up
to what they hand off to a worker thread), through mitmproxy's addon harness, for compressed bodies
small on the wire (under the 8 KiB past which a compressed body is read off the loop): a prompt and an
answer gzip'd to a few KiB that decode to 1 and 7.5 MiB. failcore/proxy/meter.py of this tree and of another
(`before`), each loaded over this tree's failcore, interleaved; wall ms of the hook call, medians of 7.

`python benchmarks/bench_meter_reads.py /tmp/NAME_before` (a `git archive main` of the other tree)."""

from __future__ import annotations

import gzip
import importlib.util
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parents[1]


def _load(tree: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, tree / "failcore/proxy/meter.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (its dataclasses look themselves up there)
    spec.loader.exec_module(module)
    return module


def _bodies(decoded: int) -> tuple[bytes, bytes]:
    prompt = {"model": "gpt-4o", "messages": [{"role": "user", "content": " " * decoded}]}
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": " " * decoded}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18},
    }
    return gzip.compress(json.dumps(prompt).encode()), gzip.compress(json.dumps(answer).encode())


def _hook_ms(meter_cls: type, request: bytes, response: bytes) -> tuple[float, float]:
    from mitmproxy import http
    from mitmproxy.test import tflow, tutils

    from failcore.proxy.gate import PolicyGate
    from tests.addon_harness import concerns

    gzipped = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
    with concerns(PolicyGate, meter_cls, confdir=Path(tempfile.mkdtemp())) as h:
        meter = h.get(meter_cls)
        meter._warming = True  # (no genai-prices import in a thread, holding the GIL, during the timing)
        req = tutils.treq(
            host="api.openai.com",
            port=443,
            scheme=b"https",
            method=b"POST",
            path=b"/v1/chat/completions",
            headers=http.Headers(gzipped),
            content=b"",
        )
        req.raw_content = request
        flow = tflow.tflow(req=req)
        h.hooks(flow, "requestheaders")
        h.get(PolicyGate).request(flow)
        started = time.perf_counter()
        handed_off = meter.request(flow)
        on_request = time.perf_counter() - started
        h.run(handed_off)
        flow.response = tutils.tresp(headers=http.Headers(gzipped), content=b"")
        flow.response.raw_content = response
        started = time.perf_counter()
        handed_off = meter.response(flow)
        on_response = time.perf_counter() - started
        if inspect.isawaitable(handed_off):
            h.run(handed_off)
        assert h.state(flow).llm.call.output_tokens == 11
    return on_request * 1e3, on_response * 1e3


def main() -> None:
    sys.path.insert(0, str(HERE))
    trees = {"before": _load(Path(sys.argv[1]), "before_meter"), "after": _load(HERE, "after_meter")}
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?")
    print(f"CPU {model}, {os.cpu_count()} cores, load average {os.getloadavg()}")
    for decoded in (1 << 20, 15 << 19):
        request, response = _bodies(decoded)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
        for _ in range(7):
            for name, module in trees.items():
                runs[name].append(_hook_ms(module.LlmMeter, request, response))
        mib = decoded / 2**20
        print(f"prompt {len(request)} B, answer {len(response)} B gzip'd, decoding to {mib:.1f} MiB:")
        for name, values in runs.items():
            on_request = statistics.median(v[0] for v in values)
            on_response = statistics.median(v[1] for v in values)
            hooks = f"request hook {on_request:5.1f} ms, response hook {on_response:5.1f} ms"
            print(f"  {name:6} on the loop: {hooks}")
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
