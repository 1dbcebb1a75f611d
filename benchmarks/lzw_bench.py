"""CPU failcore's `compress` decoder (failcore.evidence.lzw.LzwStage) spends, against zlib's C inflate for
the same plaintext (gzip'd at level 6), interleaved: CPU ms per MB of wire (.Z) and per MB decoded.

Inputs (each compressed by tests/lzw_helpers.lzw_compress, which writes what ncompress writes):
- source: this repository's *.py and *.md files, about 2 MB of text;
- llm: the recorded LLM request and response bodies of tests/data/conformance (JSON, SSE);
- random: 1 MB of random bytes (the most codes per byte, each decoding to one or two bytes);
- runs: 16 MB of one byte (the fewest codes, each decoding to up to a few thousand bytes: the flat
  table's limit and the long-string path);
- long: 1 MB of 16-bit codes each naming a string of 65 bytes, one past the flat entries (the most
  work per wire byte: each string is joined from its parts), written with tests/lzw_helpers.lzw_pack;
- clears: 1 MB of 9-bit codes, 255 random bytes then a CLEAR, over and over (written here: the most
  codes per wire byte, each a byte; no tool writes this, an attacker can).
Each is fed whole (a request body) and in 1,400-byte pieces (a streamed answer's chunks).

`python benchmarks/lzw_bench.py [OTHER_TREE]`: with another tree (a `git archive` of another commit),
its lzw.py runs too, interleaved with this one's (before / after)."""

from __future__ import annotations

import importlib.util
import os
import random
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parents[1]
ROUNDS = 5


def _load(tree: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, tree / "failcore/evidence/lzw.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inputs() -> dict[str, bytes]:
    sys.path.insert(0, str(HERE))
    from tests.llm_replay import load_exchanges

    source = b"".join(p.read_bytes() for p in sorted(HERE.glob("**/*.py")) + sorted(HERE.glob("*.md")))
    llm = "".join(
        str(e.get("request_body") or "") + str(e.get("response_body") or "") for e in load_exchanges()
    )
    return {
        "source": source[: 2 << 20],
        "llm": llm.encode()[: 2 << 20],
        "random": random.Random(1).randbytes(1 << 20),
        "runs": b"a" * (16 << 20),
    }


def _clears(size: int) -> tuple[bytes, bytes]:
    """(the stream, what it decodes to): units of 255 byte codes and a CLEAR, 9 bits each (256 codes:
    32 whole groups, no padding)."""
    rng = random.Random(2)
    plain = bytearray()
    wire = bytearray(b"\x1f\x9d\x90")
    while len(wire) < size:
        unit = rng.randbytes(255)
        plain += unit
        acc = sum(byte << (9 * k) for k, byte in enumerate(unit)) | 256 << (9 * 255)
        wire += acc.to_bytes(288, "little")
    return bytes(wire), bytes(plain)


def _lzw(module: ModuleType, wire: bytes, piece: int) -> int:
    stage = module.LzwStage(256 * 1024)
    total = 0
    for start in range(0, len(wire), piece):
        for out in stage.feed(wire[start : start + piece]):
            total += len(out)
    for out in stage.finish():
        total += len(out)
    return total


def _zlib(wire: bytes, piece: int) -> int:
    z = zlib.decompressobj(31)
    total = 0
    for start in range(0, len(wire), piece):
        total += len(z.decompress(wire[start : start + piece]))
    return total + len(z.flush())


def _cpu(run: Callable[[], int], expected: int) -> float:
    started = time.process_time()
    assert run() == expected
    return time.process_time() - started


def main() -> None:
    sys.path.insert(0, str(HERE))
    from tests.lzw_helpers import lzw_compress, lzw_pack

    trees = {"lzw": _load(HERE, "lzw_after")}
    if len(sys.argv) > 1:
        trees = {"lzw-before": _load(Path(sys.argv[1]), "lzw_before"), **trees}
    print(f"CPU: {_cpu_model()}; load average {os.getloadavg()[0]:.2f}; {ROUNDS} interleaved rounds, medians")
    inputs = {name: (lzw_compress(plain), plain) for name, plain in _inputs().items()}
    long_code = 255 + 65  # entry k of the KwKwK chain from `a` is k - 255 `a`s
    long_wire = lzw_pack([97, *range(257, long_code + 1)] + [long_code] * 500_000)
    inputs["long"] = (long_wire, b"a" * (sum(range(1, 66)) + 65 * 500_000))
    inputs["clears"] = _clears(1 << 20)
    for name, (z_wire, plain) in inputs.items():
        g_wire = zlib.compress(plain, 6, wbits=31)
        for piece in (len(z_wire) + 1, 1400):
            runs: dict[str, list[float]] = {**{t: [] for t in trees}, "zlib": []}
            for _ in range(ROUNDS):
                for tree, module in trees.items():
                    runs[tree].append(_cpu(lambda m=module, w=z_wire, p=piece: _lzw(m, w, p), len(plain)))
                runs["zlib"].append(_cpu(lambda w=g_wire, p=piece: _zlib(w, p), len(plain)))
            fed = "whole" if piece > len(z_wire) else f"{piece}-byte pieces"
            print(
                f"\n{name}: {len(plain):,} bytes, .Z {len(z_wire):,} bytes, gzip {len(g_wire):,}; fed {fed}"
            )
            zlib_s = statistics.median(runs["zlib"])
            for tree, values in runs.items():
                s = statistics.median(values)
                wire = len(g_wire) if tree == "zlib" else len(z_wire)
                print(
                    f"  {tree:10} {s * 1e3:8.1f} ms: {s * 1e3 / (wire / 1e6):7.1f} ms/MB wire, "
                    f"{s * 1e3 / (len(plain) / 1e6):6.1f} ms/MB decoded, {s / zlib_s:5.1f}x zlib"
                )


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown"


if __name__ == "__main__":
    main()
