"""Writes the .Z fixtures of tests/test_lzw.py with the real tool, and what the real decoders make of them.

Run from the repository root with Debian's `ncompress` installed (`apt-get install ncompress`):

    python tests/data/lzw/make.py

Each input is made here from a fixed seed (the same bytes every run), compressed by `compress -c` with
the fixture's options, and decoded again by `gzip -dc` and `compress -dc`: manifest.json records, per
fixture, the sha256 and size of the input and of what each decoder wrote, and each decoder's exit
status (ncompress's `-b 9` output of a table that fills decodes with neither: they stop with an error
after a prefix). Only the .Z files and the manifest are kept; the tests never need ncompress.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORDS = (
    b"the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    b"they you were her she there one all we their can has been if more when will would who so no "
    b'token secret key bearer https://api.example.com/v1/chat/completions {"model": "gpt-4o"} \n'
).split(b" ")


def text(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rng.choice(WORDS) + b" "
    return bytes(out[:size])


def noise(size: int, seed: int, alphabet: bytes | None = None) -> bytes:
    rng = random.Random(seed)
    if alphabet is None:
        return rng.randbytes(size)
    return bytes(rng.choice(alphabet) for _ in range(size))


INPUTS = {
    "empty": b"",
    "one-byte": b"x",
    "kwkwk": b"abababababababababab" + b"a" * 40,
    "text": text(40_000, 1),
    "random": noise(6_000, 2),
    "runs-of-a": b"a" * 2_000_000,  # KwKwK after KwKwK: strings of up to ~2000 bytes, a 1000x ratio
    "small-text": text(6_000, 3),
    # text, then noise over 16 letters, then text: the table fills (12 bits), the ratio drops: CLEAR
    "shift-12": text(15_000, 4) + noise(20_000, 5, b"abcdefghijklmnop") + text(15_000, 6),
    # the same at 16 bits: the text fills the table (65,536 entries) near its end, the noise after it
    # makes the ratio drop
    "shift-16": text(430_000, 7) + noise(25_000, 8),
}
FIXTURES = [
    ("empty", []),
    ("one-byte", []),
    ("kwkwk", []),
    ("text", []),
    # no block mode (compress 2.0): ncompress numbers its entries from 257 all the same, so neither
    # decoder reads past the first entries (tests/lzw_helpers.py writes such streams right)
    ("small-text", ["-C"]),
    ("random", []),
    ("runs-of-a", []),
    # 9 bits: once the table fills, ncompress and gzip both stop with an error (the width grows to 10
    # in the decoders, not in the encoder)
    *[("small-text", ["-b", str(bits)]) for bits in range(9, 17)],
    ("shift-12", ["-b", "12"]),
    ("shift-16", []),
]


def digest(data: bytes) -> dict[str, object]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def main() -> None:
    manifest = {}
    for name, options in FIXTURES:
        plain = INPUTS[name]
        wire = subprocess.run(["compress", "-c", *options], input=plain, capture_output=True).stdout
        fixture = name + "".join(options).replace("-", "_") + ".Z"
        (HERE / fixture).write_bytes(wire)
        gzip = subprocess.run(["gzip", "-dc"], input=wire, capture_output=True)
        ncompress = subprocess.run(["compress", "-dc"], input=wire, capture_output=True)
        manifest[fixture] = {
            "input": name,
            "options": options,
            "plain": digest(plain),
            "gzip": {**digest(gzip.stdout), "status": gzip.returncode},
            "ncompress": {**digest(ncompress.stdout), "status": ncompress.returncode},
        }
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
